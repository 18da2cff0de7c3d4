#!/usr/bin/env python3
"""Gateway benchmark: the session-affinity gateway (issue 6) side by side with
the plain forwarding path, each next to its backend called directly.

    benchmarks/gateway_vs_relay.py [--runs 5] [--duration 5s] [--concurrency 16 64]
                                   [--sessions N] [--threads 1]

Paths, all loaded by the same closed-loop C++ gRPC client (`omnirelay
benchmark`), unary, 64-byte payload:
  gateway   client -> gateway node on the frame relay (dataPath frame: JWT
            verified and the sticky pick on the HEADERS, frames pumped)
            -> `omnirelay worker` (MyServiceEcho; body = a serialized EchoRequest)
  gw-grpc   the same through a second gateway with dataPath grpc (grpc++ path)
  relay     client -> `omnirelay serve` on the frame relay (route "/" ->
            outbound, dataPath frame) -> `omnirelay echo`
  relay-md  the same relay, the calls carrying the gateway calls' metadata
            (authorization: the JWT, session-id): equal headers on the wire
  worker    client -> the worker directly (same metadata; it trusts the caller)
  echo      client -> the echo node directly
For every run the script reads utime+stime from /proc of the proxy, of the
client and of the backend over the measured window (after the warmup) and
prints each as CPU microseconds per call, so the proxy's cost is separated
from the client's and the backend's; the gateway/relay ratio of proxy CPU per
call is the issue-15 figure (target <= 1.2). `--threads` sets the relay's
event loops and the gateways' frameThreads alike.
With --sessions N, N sessions run side by side, each on its own worker (one
instance holds one session). With the default of one session: a session
is one backend — the relay is therefore given one echo backend too. Paths are
loaded alternately (gateway, relay, worker, echo, gateway, ...) and the script
prints medians of the runs and the gateway/relay ratios. The direct rows show
how much of each figure is the backend's own cost (the worker builds a richer
reply than echo). Everything binds 127.0.0.1 with port 0. Needs a built
omnirelay-native and /usr/bin/python3 with python3-grpcio (for the Login).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import native  # noqa: E402  (this folder is on sys.path when run as a script)

ECHO_METHOD = "/omnirelay.echo.v1.Echo/Echo"
WORKER_METHOD = "/my_service.MyServiceAPI/MyServiceEcho"
LOGIN_METHOD = "/my_service.MyServiceAPI/Login"
PAYLOAD = "x" * 64




class Proc:
    """A native process, ready when its ready file appears; always stopped."""

    def __init__(self, args, ready_file: Path):
        self.p = subprocess.Popen(args + ["--ready-file", str(ready_file)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not ready_file.exists():
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"{args[:2]} failed to start: {self.p.stderr.read()}")
            time.sleep(0.02)
        self.ready = json.loads(ready_file.read_text())

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)


def pb_string(field: int, value: bytes) -> bytes:
    """One length-delimited protobuf field (lengths < 128 here)."""
    assert len(value) < 128
    return bytes([field << 3 | 2, len(value)]) + value


def login(gateway: str, session: str) -> str:
    """Login through the gateway with raw bytes (no generated stubs needed)."""
    import grpc  # python3-grpcio
    request = (pb_string(1, b"testuser") + pb_string(2, b"testpass")
               + pb_string(3, session.encode()))
    with grpc.insecure_channel(gateway) as channel:
        reply = channel.unary_unary(LOGIN_METHOD)(request, timeout=10)
    # LoginResponse.token is field 1: tag 0x0a, varint length, bytes.
    assert reply[0] == 0x0A, reply[:4]
    length, shift, i = 0, 0, 1
    while True:
        b = reply[i]
        length |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if b < 0x80:
            break
    return reply[i:i + length].decode()


def cpu_seconds(pids) -> float:
    """utime + stime of the processes, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def parse_seconds(text: str) -> float:
    for unit, scale in (("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def load(address: str, procedure: str, body_file: Path, headers, concurrency: int,
         duration: str, warmup: str) -> dict:
    """One client run; its own CPU over the measured window comes with it."""
    args = [native(), "benchmark", "--transport", "grpc", "--address", address,
            "--procedure", procedure, "--body-file", str(body_file),
            "--concurrency", str(concurrency), "--duration", duration, "--warmup", warmup,
            "--json", "--quiet"]
    for k, v in headers:
        args += ["--header", f"{k}={v}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(parse_seconds(warmup))
    client_before = cpu_seconds([proc.pid])
    out = proc.stdout.read()
    err = proc.stderr.read()
    # Reap it ourselves: the rusage of a finished process is only in wait4.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"benchmark failed: {err}")
    report = json.loads(out)
    return {"qps": report["throughput_rps"], "p99": report["latency_ms"]["success"]["p99"],
            "p50": report["latency_ms"]["success"]["p50"], "failures": report["failures"],
            "requests": report["requests"],
            "client_cpu": usage.ru_utime + usage.ru_stime - client_before}


def owner_of(worker: str, session_headers, payload: str):
    """The headers of the session bound to `worker` (it refuses any other)."""
    import grpc  # python3-grpcio
    with grpc.insecure_channel(worker) as channel:
        call = channel.unary_unary(WORKER_METHOD)
        for headers in session_headers:
            try:
                call(pb_string(1, payload.encode()), metadata=headers, timeout=5)
                return headers
            except grpc.RpcError:
                continue
    sys.exit(f"no benchmark session is bound to {worker}")


def load_together(clients, concurrency: int, duration: str, warmup: str, proxy_pids,
                  backend_pids) -> dict:
    """Runs one benchmark process per client at once, splitting `concurrency`;
    throughput adds up, p50/p99 are the worst client's. CPU per call of the
    proxy, the clients and the backends over the measured window."""
    from concurrent.futures import ThreadPoolExecutor

    share = max(1, concurrency // len(clients))
    with ThreadPoolExecutor(len(clients) + 1) as pool:
        futures = [pool.submit(load, *cl, share, duration, warmup) for cl in clients]
        time.sleep(parse_seconds(warmup))
        proxy_before, backend_before = cpu_seconds(proxy_pids), cpu_seconds(backend_pids)
        results = [f.result() for f in futures]
        proxy_cpu = cpu_seconds(proxy_pids) - proxy_before
        backend_cpu = cpu_seconds(backend_pids) - backend_before
    calls = max(1, sum(r["requests"] for r in results))
    return {"qps": sum(r["qps"] for r in results), "p99": max(r["p99"] for r in results),
            "p50": max(r["p50"] for r in results),
            "failures": sum(r["failures"] for r in results),
            "requests": sum(r["requests"] for r in results),
            "proxy_us": proxy_cpu / calls * 1e6 if proxy_pids else float("nan"),
            "client_us": sum(r["client_cpu"] for r in results) / calls * 1e6,
            "backend_us": backend_cpu / calls * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--warmup", default="1s")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--sessions", type=int, default=1,
                        help="sessions (= workers, one session each) loaded in parallel through "
                             "the gateway; the relay gets as many echo backends and clients")
    parser.add_argument("--threads", type=int, default=1,
                        help="event loops of the relay and of the gateways' frame relay")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = []

    def start(name: str, *argv: str) -> Proc:
        p = Proc([native(), *argv, "--log-level", "warn"], tmp / f"{name}.ready.json")
        procs.append(p)
        return p

    try:
        registry = start("registry", "registry", "--listen", "127.0.0.1:0",
                         "--insecure-allow-unauthenticated")
        secret = tmp / "state" / "jwt-secret"
        auth = start("auth", "auth", "--listen", "127.0.0.1:0", "--db",
                     str(tmp / "state" / "users.db"), "--jwt-secret-file", str(secret),
                     "--create-secret")
        workers = [start(f"worker-{i + 1}", "worker", "--listen", "127.0.0.1:0", "--instance",
                         f"worker-{i + 1}", "--registry", registry.ready["address"])
                   for i in range(args.sessions)]
        worker = workers[0]
        def start_gateway(name: str, data_path: str) -> Proc:
            cfg = tmp / f"{name}.json"
            cfg.write_text(json.dumps({"omniRelay": {
                "service": name, "admin": {"address": "127.0.0.1:0"},
                "gateway": {
                    "address": "127.0.0.1:0", "jwt": {"secretFile": str(secret)},
                    "clusters": {"auth": {"endpoints": [auth.ready["address"]]},
                                 "workers": {"registry": registry.ready["address"],
                                             "role": "worker", "refreshInterval": "500ms"}},
                    "routes": [
                        {"prefix": LOGIN_METHOD, "cluster": "auth", "authorization": "none",
                         "balancer": "round-robin", "dataPath": data_path},
                        {"prefix": "/my_service.MyServiceAPI/MyService", "cluster": "workers",
                         "authorization": "required", "balancer": "sticky",
                         "stickyHeader": "session-id", "dataPath": data_path}],
                    "defaultRoute": {"error": "UNIMPLEMENTED"},
                    "frameThreads": args.threads,
                    "maxAttempts": 3, "attemptTimeout": "2s"}}}))
            return start(name, "serve", "--config", str(cfg))

        gateway = start_gateway("gateway", "frame")
        gateway_grpc = start_gateway("gateway-grpc", "grpc")
        echoes = [start(f"echo-{i}", "echo", "--instance", f"b{i}", "--grpc-address",
                        "127.0.0.1:0", "--admin-address", "127.0.0.1:0", "--threads", "2")
                  for i in range(args.sessions)]
        echo = echoes[0]
        relay_cfg = tmp / "relay.json"
        relay_cfg.write_text(json.dumps({"omniRelay": {
            "service": "relay",
            "inbounds": {"grpc": {"address": "127.0.0.1:0", "threads": args.threads}},
            "admin": {"address": "127.0.0.1:0"},
            "middleware": {"inbound": ["deadline"], "outbound": []},
            "outbounds": {"echo": {"transport": "grpc",
                                   "endpoints": [e.ready["grpc"] for e in echoes],
                                   "peerChooser": "round-robin"}},
            "routes": [{"prefix": "/", "outbound": "echo", "dataPath": "frame"}]}}))
        relay = start("relay", "serve", "--config", str(relay_cfg))

        # Wait for the gateways to list the workers, then log in once.
        import urllib.request
        for gw in (gateway, gateway_grpc):
            deadline = time.monotonic() + 10
            while True:
                with urllib.request.urlopen(
                        f"http://{gw.ready['admin']}/omnirelay/gateway", timeout=5) as r:
                    members = json.loads(r.read())["clusters"]["workers"]["members"]
                if len(members) >= args.sessions or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        sessions = [f"bench-session-{i}" for i in range(args.sessions)]
        session_headers = [[("authorization", login(gateway.ready["gateway"], s)), ("session-id", s)]
                           for s in sessions]
        # Bind every session through the gateway first; the direct worker row
        # then needs the session worker-1 got, which depends on the rotation.
        for session_header in session_headers:
            owner_of(gateway.ready["gateway"], [session_header], PAYLOAD)
            owner_of(gateway_grpc.ready["gateway"], [session_header], PAYLOAD)
        headers = owner_of(worker.ready["address"], session_headers, PAYLOAD)
        worker_body = tmp / "echo_request.bin"
        worker_body.write_bytes(pb_string(1, PAYLOAD.encode()))  # EchoRequest{value}
        echo_body = tmp / "echo_body.bin"
        echo_body.write_bytes(PAYLOAD.encode())

        # Each path is a list of clients run side by side (one per session for
        # the gateway, as many for the relay, so both pay the same client cost).
        paths = {
            "gateway": [(gateway.ready["gateway"], WORKER_METHOD, worker_body, h)
                        for h in session_headers],
            "gw-grpc": [(gateway_grpc.ready["gateway"], WORKER_METHOD, worker_body, h)
                        for h in session_headers],
            "relay": [(relay.ready["grpc"], ECHO_METHOD, echo_body, [])] * args.sessions,
            # The same relay carrying the gateway calls' metadata (a ~200-byte
            # JWT and the session id): equal headers on the wire, so the
            # ratio to it isolates what the gateway itself adds per call.
            "relay-md": [(relay.ready["grpc"], ECHO_METHOD, echo_body, h)
                         for h in session_headers],
            "worker": [(worker.ready["address"], WORKER_METHOD, worker_body, headers)],
            "echo": [(echo.ready["grpc"], ECHO_METHOD, echo_body, [])],
        }
        worker_pids = [w.p.pid for w in workers]
        echo_pids = [e.p.pid for e in echoes]
        # (proxy processes, backend processes) per path.
        pids = {"gateway": ([gateway.p.pid], worker_pids),
                "gw-grpc": ([gateway_grpc.p.pid], worker_pids),
                "relay": ([relay.p.pid], echo_pids),
                "relay-md": ([relay.p.pid], echo_pids),
                "worker": ([], [worker.p.pid]),
                "echo": ([], [echo.p.pid])}
        results = {}
        for c in args.concurrency:
            runs = {name: [] for name in paths}
            for run in range(args.runs):
                for name, clients in paths.items():
                    r = load_together(clients, c, args.duration, args.warmup, *pids[name])
                    if r["failures"]:
                        sys.exit(f"{name}: {r['failures']} failed calls at concurrency {c}")
                    runs[name].append(r)
                    print(f"c={c:<4} run {run + 1}/{args.runs} {name:<8} {r['qps']:9.0f} qps  "
                          f"p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  cpu us/call proxy "
                          f"{r['proxy_us']:6.1f} client {r['client_us']:6.1f} backend "
                          f"{r['backend_us']:6.1f}", flush=True)
            keys = ("qps", "p50", "p99", "proxy_us", "client_us", "backend_us")
            results[c] = {name: {k: statistics.median(x[k] for x in rs) for k in keys}
                          | {"runs": rs} for name, rs in runs.items()}
        print()
        print(f"{'conc':>4}  {'path':<8} {'median qps':>10} {'p50 ms':>7} {'p99 ms':>7}  "
              f"{'CPU us/call: proxy':>18} {'client':>7} {'backend':>8}")
        for c, by in results.items():
            for name in paths:
                x = by[name]
                print(f"{c:>4}  {name:<8} {x['qps']:10.0f} {x['p50']:7.2f} {x['p99']:7.2f}  "
                      f"{x['proxy_us']:18.1f} {x['client_us']:7.1f} {x['backend_us']:8.1f}")
            g, gg, r, rm = by["gateway"], by["gw-grpc"], by["relay"], by["relay-md"]
            print(f"{c:>4}  gateway/relay-md proxy CPU per call "
                  f"{g['proxy_us'] / rm['proxy_us']:.2f} (same headers on the wire)")
            print(f"{c:>4}  gateway/relay proxy CPU per call {g['proxy_us'] / r['proxy_us']:.2f} "
                  f"(grpc++ gateway/relay {gg['proxy_us'] / r['proxy_us']:.2f}); qps ratio "
                  f"{g['qps'] / r['qps']:.2f}, p99 ratio {g['p99'] / r['p99']:.2f}; "
                  f"gateway/worker-direct qps {g['qps'] / by['worker']['qps']:.2f}, "
                  f"relay/echo-direct qps {r['qps'] / by['echo']['qps']:.2f}")
        print(f"(medians of {args.runs} runs of {args.duration} after {args.warmup} warmup; "
              f"unary, 64-byte payload; {args.sessions} session(s) on as many workers; relay to "
              f"{args.sessions} echo backend(s); concurrency split across the clients)")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {str(c): {n: {k: v for k, v in d.items() if k != "runs"} for n, d in by.items()}
                 for c, by in results.items()}, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
