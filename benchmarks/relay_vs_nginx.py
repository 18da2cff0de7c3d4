#!/usr/bin/env python3
"""Side-by-side relay benchmark: `omnirelay serve` (forwarding mode) vs nginx
`grpc_pass`, both in front of the same three `omnirelay echo` backends.

    benchmarks/relay_vs_nginx.py [--runs 3] [--duration 5s] [--concurrency 64 256]

For every concurrency level the two proxies are loaded alternately (relay,
nginx, relay, nginx, ...) by the same closed-loop C++ gRPC client
(`omnirelay benchmark`, 64-byte unary echo), and the script prints the median
QPS and p99 of each, and their ratio. Everything binds 127.0.0.1; ports are
picked free by the kernel (port 0) except nginx's, which is probed free.
Needs Debian's nginx (scripts/install-deps.sh) and a built omnirelay-native.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import native  # noqa: E402  (this folder is on sys.path when run as a script)

METHOD = "/omnirelay.echo.v1.Echo/Echo"




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, args, ready_file=None, **kw):
        self.ready = None
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, **kw)
        if ready_file:
            deadline = time.monotonic() + 20
            while not Path(ready_file).exists():
                if self.p.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    sys.exit(f"{args[:2]} failed: {self.p.stderr.read() if self.p.stderr else ''}")
                time.sleep(0.02)
            self.ready = json.loads(Path(ready_file).read_text())

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


# keepalive_requests (nginx >= 1.19.7; default 1000) is set high on both sides
# on purpose: with the default, nginx sends GOAWAY on a client's HTTP/2
# connection after 1000 requests, and every stream the client opened past the
# GOAWAY's last-stream-id is refused (RST_STREAM REFUSED_STREAM). The lean
# benchmark client counts those as UNAVAILABLE (grpc++ would retry them
# transparently): 7 111 of 43 000 calls failed at c=4 that way. Upstream, the
# same default and `keepalive` below the concurrency made nginx reconnect to the
# backends every 1000 calls. `least_conn` matches haproxy's `balance leastconn`
# and the relay's fewest-pending chooser.
NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream echo {{
    least_conn;
{servers}
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{port} http2;
    http2_max_concurrent_streams 1024;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    location / {{ grpc_pass grpc://echo; }}
  }}
}}
"""


def process_tree(pid: int) -> list:
    """pid and its children (nginx workers)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def cpu_seconds(pids: list) -> float:
    """utime + stime of the processes (what the proxy itself spent)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def load(address: str, concurrency: int, duration: str, warmup: str, pids=None) -> dict:
    args = [native(), "benchmark", "--transport", "grpc", "--address", address,
            "--procedure", METHOD, "--body", "x" * 64, "--concurrency", str(concurrency),
            "--duration", duration, "--warmup", warmup, "--json", "--quiet"]
    before = cpu_seconds(pids or [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    cpu = cpu_seconds(pids or []) - before
    if out.returncode != 0:
        sys.exit(f"benchmark failed: {out.stderr}")
    report = json.loads(out.stdout)
    # CPU per call includes the warmup's calls only approximately (warmup is
    # short next to the measured part); good enough to compare proxies.
    calls = max(1, report["requests"])
    return {"qps": report["throughput_rps"], "p99": report["latency_ms"]["success"]["p99"],
            "failures": report["failures"], "cpu_us_per_call": cpu / calls * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--warmup", default="1s")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--relay-threads", type=int, default=2)
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        sys.exit("nginx not installed: apt-get install -y nginx (see scripts/install-deps.sh)")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    procs = []
    try:
        backends = []
        for i in range(3):
            ready = tmp / f"b{i}.json"
            p = Proc([native(), "echo", "--instance", f"b{i}", "--grpc-address", "127.0.0.1:0",
                      "--admin-address", "127.0.0.1:0", "--threads", "1", "--log-level", "warn",
                      "--ready-file", str(ready)], ready)
            procs.append(p)
            backends.append(p.ready["grpc"])
        relay_cfg = tmp / "relay.json"
        relay_cfg.write_text(json.dumps({"omniRelay": {
            "service": "relay",
            "inbounds": {"grpc": {"address": "127.0.0.1:0", "threads": args.relay_threads}},
            "admin": {"address": "127.0.0.1:0"},
            # The forwarding fast path: no per-call middleware beyond deadlines.
            "middleware": {"inbound": ["deadline"], "outbound": []},
            "outbounds": {"echo": {"transport": "grpc", "endpoints": backends,
                                   "peerChooser": "round-robin"}},
            "routes": [{"prefix": "/", "outbound": "echo"}],
        }}))
        ready = tmp / "relay.ready.json"
        relay = Proc([native(), "serve", "--config", str(relay_cfg), "--log-level", "warn",
                      "--ready-file", str(ready)], ready)
        procs.append(relay)
        nginx_port = free_port()
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / d).mkdir()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            workers=args.nginx_workers, tmp=tmp, port=nginx_port,
            servers="\n".join(f"    server {b};" for b in backends)))
        nginx = Proc([nginx_bin, "-c", str(conf), "-p", str(tmp)])
        procs.append(nginx)
        time.sleep(0.5)
        targets = {"relay": relay.ready["grpc"], "nginx": f"127.0.0.1:{nginx_port}"}
        tree = {"relay": [relay.p.pid], "nginx": process_tree(nginx.p.pid)}
        # Smoke both before measuring.
        for name, address in targets.items():
            r = load(address, 4, "500ms", "0ms")
            if r["failures"] or r["qps"] <= 0:
                sys.exit(f"{name} does not relay: {r}")

        results = {}
        for c in args.concurrency:
            runs = {"relay": [], "nginx": []}
            for i in range(args.runs):
                for name in ("relay", "nginx"):
                    r = load(targets[name], c, args.duration, args.warmup, tree[name])
                    runs[name].append(r)
                    print(f"  c={c} run {i + 1}/{args.runs} {name:5s} "
                          f"{r['qps']:9.0f} qps  p99 {r['p99']:7.2f} ms  "
                          f"proxy cpu {r['cpu_us_per_call']:5.1f} us/call  failures {r['failures']}",
                          flush=True)
            results[c] = {name: {"qps": statistics.median(x["qps"] for x in rs),
                                 "p99": statistics.median(x["p99"] for x in rs),
                                 "cpu_us_per_call": statistics.median(
                                     x["cpu_us_per_call"] for x in rs),
                                 "runs": rs} for name, rs in runs.items()}
        print()
        print(f"{'concurrency':>11}  {'relay qps':>10} {'relay p99':>10}  {'nginx qps':>10} "
              f"{'nginx p99':>10}  {'qps ratio':>9} {'p99 ratio':>9}  {'cpu us/call relay/nginx':>24}")
        for c, r in results.items():
            rq, nq = r["relay"]["qps"], r["nginx"]["qps"]
            rp, np_ = r["relay"]["p99"], r["nginx"]["p99"]
            print(f"{c:>11}  {rq:>10.0f} {rp:>8.2f}ms  {nq:>10.0f} {np_:>8.2f}ms  "
                  f"{rq / nq:>9.2f} {rp / np_ if np_ else float('nan'):>9.2f}  "
                  f"{r['relay']['cpu_us_per_call']:>12.1f} / {r['nginx']['cpu_us_per_call']:<9.1f}")
        print(f"(median of {args.runs} runs of {args.duration}; 64-byte unary echo; "
              f"3 echo backends; relay threads {args.relay_threads}, nginx workers {args.nginx_workers})")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
