#!/usr/bin/env python3
"""Side-by-side forwarding benchmark: the direct backend, `omnirelay serve` on
the HTTP/2 frame relay (fast path) and on the grpc++ path, haproxy and nginx
`grpc_pass`, all in front of the same echo backends, loaded alternately by the
same C++ client.

    benchmarks/relay_side_by_side.py [--runs 3] [--duration 3s] [--threads 1]
                                     [--concurrency 1 16 64 256] [--payload 64 4096]

For every payload size and concurrency level each target is loaded in turn
(direct, frame, grpc, haproxy, nginx, then again for the next run), so all see
the same background load; the script prints, per target, the median over the
runs of QPS, p50, p99 and the proxy's CPU per call (utime+stime from /proc of
the proxy's processes during the measured window, divided by the calls), then
the ratios of the frame relay to the others. Every proxy gets the same number
of threads/workers (`--threads`): relay event loops / grpc++ queues,
haproxy `nbthread`, nginx `worker_processes`. haproxy uses `balance leastconn`
and HTTP/2 on both sides; nginx `least_conn` with upstream keepalive and
`keepalive_requests` raised on both sides (relay_vs_nginx.NGINX_CONF says why:
the default closes client connections every 1000 calls and refuses streams).

Everything binds 127.0.0.1 with free ports. Needs Debian's haproxy and nginx
(scripts/install-deps.sh) and a built omnirelay-native. `--quick` runs a tiny
smoke configuration (one run, short, c=16, 64 B).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import native  # noqa: E402
from relay_vs_nginx import NGINX_CONF, Proc, cpu_seconds, free_port, process_tree  # noqa: E402

METHOD = "/omnirelay.echo.v1.Echo/Echo"
TARGETS = ("direct", "frame", "grpc", "haproxy", "nginx")

HAPROXY_CONF = """
global
  nbthread {threads}
  maxconn 8000
  log stderr format raw local0 emerg
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend relay
  bind 127.0.0.1:{port} proto h2
  default_backend echo
backend echo
  balance leastconn
{servers}
"""


def load(address: str, concurrency: int, payload: int, duration: str, warmup: str,
         pids=None, backend_pids=(), timeout: str = "") -> dict:
    args = [native(), "benchmark", "--transport", "grpc", "--address", address,
            "--procedure", METHOD, "--body", "x" * payload, "--concurrency", str(concurrency),
            "--duration", duration, "--warmup", warmup, "--json", "--quiet"]
    if timeout:  # every call carries grpc-timeout, as most real clients' calls do
        args += ["--timeout", timeout]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Measure the proxy's CPU over the measured window only (after the warmup).
    time.sleep(parse_seconds(warmup))
    before = cpu_seconds(pids or [])
    client_before = cpu_seconds([proc.pid])
    backends_before = [cpu_seconds([b]) for b in backend_pids]
    start = time.monotonic()
    out, err = proc.communicate(timeout=600)
    wall = max(1e-6, time.monotonic() - start)
    cpu = cpu_seconds(pids or []) - before
    backend_cores = [(cpu_seconds([b]) - b0) / wall for b, b0 in zip(backend_pids, backends_before)]
    # The client has exited: its whole CPU is in our children's rusage.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_total = (children.ru_utime - children_before.ru_utime +
                    children.ru_stime - children_before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"benchmark failed: {err}")
    report = json.loads(out)
    calls = max(1, report["requests"])
    success = report["latency_ms"]["success"]
    return {"qps": report["throughput_rps"], "p50": success["p50"], "p99": success["p99"],
            "failures": report["failures"],
            "cpu_us_per_call": cpu / calls * 1e6 if pids else float("nan"),
            # Bottleneck check: cores used during the measured window by the
            # client and by the busiest echo backend (each has 1 thread, so
            # ~1.0 means that backend, not the proxy, limits the rate).
            "client_cores": max(0.0, client_total - client_before) / wall,
            "backend_max_cores": max(backend_cores, default=float("nan"))}


def wait_listening(port: int, proc: Proc) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            sys.exit(f"proxy exited: {proc.p.stderr.read() if proc.p.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def parse_seconds(text: str) -> float:
    for unit, scale in (("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", default="3s")
    parser.add_argument("--warmup", default="500ms")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--payload", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads/workers of every proxy (relay loops, haproxy nbthread, "
                             "nginx workers)")
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--quick", action="store_true", help="one short run at c=16, 64 B")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--call-timeout", default="",
                        help="a per-call timeout sent as grpc-timeout (e.g. 5s; default: none)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.duration, args.warmup = 1, "1s", "200ms"
        args.concurrency, args.payload = [16], [64]
    haproxy_bin = shutil.which("haproxy") or "/usr/sbin/haproxy"
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    for name, binary in (("haproxy", haproxy_bin), ("nginx", nginx_bin)):
        if name in args.targets and not Path(binary).exists():
            sys.exit(f"{name} not installed: apt-get install -y {name} (scripts/install-deps.sh)")

    tmp = Path(tempfile.mkdtemp(prefix="relay-sbs-"))
    procs = []
    try:
        backends = []
        for i in range(args.backends):
            ready = tmp / f"b{i}.json"
            p = Proc([native(), "echo", "--instance", f"b{i}", "--grpc-address", "127.0.0.1:0",
                      "--admin-address", "127.0.0.1:0", "--threads", "1", "--log-level", "warn",
                      "--ready-file", str(ready)], ready)
            procs.append(p)
            backends.append(p.ready["grpc"])
        backend_pids = [p.p.pid for p in procs]
        targets, trees = {"direct": backends[0]}, {"direct": None}

        def relay(name: str, data_path: str):
            cfg = tmp / f"{name}.json"
            cfg.write_text(json.dumps({"omniRelay": {
                "service": name,
                "inbounds": {"grpc": {"address": "127.0.0.1:0", "threads": args.threads}},
                "admin": {"address": "127.0.0.1:0"},
                # Plain forwarding: deadlines only (the frame relay enforces them itself).
                "middleware": {"inbound": ["deadline"], "outbound": []},
                "outbounds": {"echo": {"transport": "grpc", "endpoints": backends,
                                       "peerChooser": "fewest-pending",
                                       "threads": args.threads}},
                "routes": [{"prefix": "/", "outbound": "echo", "dataPath": data_path}],
            }}))
            ready = tmp / f"{name}.ready.json"
            p = Proc([native(), "serve", "--config", str(cfg), "--log-level", "warn",
                      "--ready-file", str(ready)], ready)
            procs.append(p)
            targets[name], trees[name] = p.ready["grpc"], [p.p.pid]

        if "frame" in args.targets:
            relay("frame", "frame")
        if "grpc" in args.targets:
            relay("grpc", "grpc")
        if "haproxy" in args.targets:
            port = free_port()
            conf = tmp / "haproxy.cfg"
            conf.write_text(HAPROXY_CONF.format(
                threads=args.threads, port=port,
                servers="\n".join(f"  server b{i} {b} proto h2" for i, b in enumerate(backends))))
            p = Proc([haproxy_bin, "-f", str(conf), "-db"])
            procs.append(p)
            wait_listening(port, p)
            targets["haproxy"], trees["haproxy"] = f"127.0.0.1:{port}", [p.p.pid]
        if "nginx" in args.targets:
            port = free_port()
            for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (tmp / d).mkdir()
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(
                workers=args.threads, tmp=tmp, port=port,
                servers="\n".join(f"    server {b};" for b in backends)))
            p = Proc([nginx_bin, "-c", str(conf), "-p", str(tmp)])
            procs.append(p)
            wait_listening(port, p)
            targets["nginx"], trees["nginx"] = f"127.0.0.1:{port}", process_tree(p.p.pid)
        order = [t for t in TARGETS if t in targets]
        for name in order:  # smoke every target before measuring
            r = load(targets[name], 4, 64, "300ms", "0ms")
            if r["failures"] or r["qps"] <= 0:
                sys.exit(f"{name} does not forward: {r}")

        results: dict = {}
        for payload in args.payload:
            for c in args.concurrency:
                runs: dict = {name: [] for name in order}
                for i in range(args.runs):
                    for name in order:
                        r = load(targets[name], c, payload, args.duration, args.warmup,
                                 trees[name], backend_pids, args.call_timeout)
                        runs[name].append(r)
                        print(f"  {payload:>5}B c={c:<3} run {i + 1}/{args.runs} {name:7s} "
                              f"{r['qps']:9.0f} qps  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms"
                              f"  proxy cpu {r['cpu_us_per_call']:6.1f} us/call"
                              f"  client {r['client_cores']:4.2f} cores"
                              f"  busiest backend {r['backend_max_cores']:4.2f} cores"
                              f"  failures {r['failures']}", flush=True)
                results[f"{payload}B/c{c}"] = {
                    name: {key: statistics.median(x[key] for x in rs)
                           for key in ("qps", "p50", "p99", "cpu_us_per_call", "client_cores",
                                       "backend_max_cores")} | {"runs": rs}
                    for name, rs in runs.items()}
        print_table(results, order)
        print(f"(median of {args.runs} runs of {args.duration} after {args.warmup} warmup; "
              f"unary echo; {args.backends} echo backends with 1 thread each; every proxy "
              f"{args.threads} thread(s)/worker(s); client: omnirelay benchmark, closed loop)")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(results: dict, order: list) -> None:
    print()
    head = f"{'case':>10} " + " ".join(f"{n + ' qps':>12} {'p50/p99 ms':>13} {'cpu us':>6}"
                                       for n in order)
    print(head)
    for case, r in results.items():
        cells = []
        for n in order:
            x = r[n]
            cells.append(f"{x['qps']:>12.0f} {x['p50']:>6.2f}/{x['p99']:<6.2f} "
                         f"{x['cpu_us_per_call']:>6.1f}")
        print(f"{case:>10} " + " ".join(cells))
    print()
    print("bottleneck check (median cores during the window: client / busiest 1-thread backend)")
    print(f"{'case':>10} " + " ".join(f"{n:>14}" for n in order))
    for case, r in results.items():
        print(f"{case:>10} " + " ".join(
            f"{r[n]['client_cores']:>6.2f}/{r[n]['backend_max_cores']:<7.2f}" for n in order))
    if "frame" not in order:
        return
    print()
    others = [n for n in order if n != "frame"]
    print(f"{'case':>10} " + " ".join(f"{'frame/' + n + ' qps':>18} {'p99':>6} {'cpu':>5}"
                                      for n in others))
    for case, r in results.items():
        f = r["frame"]
        cells = []
        for n in others:
            o = r[n]
            q = f["qps"] / o["qps"] if o["qps"] else float("nan")
            p = f["p99"] / o["p99"] if o["p99"] else float("nan")
            u = (f["cpu_us_per_call"] / o["cpu_us_per_call"]
                 if o["cpu_us_per_call"] == o["cpu_us_per_call"] and o["cpu_us_per_call"]
                 else float("nan"))
            cells.append(f"{q:>18.2f} {p:>6.2f} {u:>5.2f}")
        print(f"{case:>10} " + " ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
