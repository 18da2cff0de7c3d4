#!/usr/bin/env python3
"""The ceiling of `omnirelay benchmark` versus h2load against the same backend.

    benchmarks/benchmark_vs_h2load.py [--runs 5] [--duration 5] [--concurrency 16]

Starts one lean echo backend on 127.0.0.1 (`omnirelay-lean-echo`: grpc++,
one completion queue, one thread, generic calls, nothing else), then loads it
alternately with h2load (nghttp2-client; one connection, one thread,
`--concurrency` streams, a 64-byte gRPC unary echo framed by hand) and with
`omnirelay benchmark` (one connection, one thread, same concurrency, same
body). Each run prints both clients' rates, their CPU per request and the
backend's CPU (in cores) while each client ran; the summary prints medians and
the ratio. The backend must not be the bottleneck: its CPU must stay below one
core (checked; the script fails when the median is at 0.95 core or more).
Target (issue 15, item 5): omnirelay benchmark >= 0.8x h2load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import native  # noqa: E402  (this folder is on sys.path when run as a script)

METHOD = "/omnirelay.echo.v1.Echo/Echo"
# One client thread, like h2load -t 1: on 2 cores the backend needs the other one.
THREADS = 1




def lean_echo() -> str:
    """The omnirelay-lean-echo next to the omnirelay-native being measured."""
    override = os.environ.get("OMNIRELAY_LEAN_ECHO_BIN")
    if override:
        return override
    build = Path(native()).parents[3]  # build/<type>/cpp/omnirelay/cli/omnirelay-native
    candidate = build / "cpp" / "omnirelay" / "benchmark" / "omnirelay-lean-echo"
    if not candidate.exists():
        sys.exit(f"{candidate} not built (cmake --build {build} --target omnirelay-lean-echo)")
    return str(candidate)


def start_backend() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([lean_echo(), "--address", "127.0.0.1:0"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()  # "listening 127.0.0.1:PORT", printed once serving
    match = re.match(r"listening (\S+)", line or "")
    if not match:
        process.kill()
        sys.exit(f"lean echo backend did not start: {line!r}")
    return process, match.group(1)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_client(argv: list[str], backend_pid: int, timeout: float) -> tuple[str, float, float]:
    """Runs one client; returns its stdout, its CPU seconds and the backend's
    CPU seconds spent meanwhile per wall second (cores)."""
    backend_before, wall_before = cpu_seconds(backend_pid), time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        sys.exit(f"client timed out: {' '.join(argv)}")
    # The child is reaped by communicate(); its CPU is in our children's rusage.
    wall = time.monotonic() - wall_before
    backend_cores = (cpu_seconds(backend_pid) - backend_before) / wall
    if process.returncode != 0:
        sys.exit(f"client failed ({process.returncode}): {' '.join(argv)}\n{out[-2000:]}")
    return out, wall, backend_cores


def children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def run_h2load(address: str, body: Path, concurrency: int, duration: int,
               backend_pid: int) -> tuple[float, float, float]:
    before = children_cpu()
    out, _, backend_cores = run_client(
        ["h2load", "-c", "1", "-m", str(concurrency), "-D", str(duration), "-t", "1",
         "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
         f"http://{address}{METHOD}"], backend_pid, duration + 60)
    cpu = children_cpu() - before
    match = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    if not match or not status or int(status.group(1)) == 0 or not done:
        sys.exit(f"h2load output not understood:\n{out}")
    return float(match.group(1)), cpu / max(1, int(done.group(1))) * 1e6, backend_cores


def run_omnirelay(address: str, payload: bytes, concurrency: int, duration: int,
                  backend_pid: int) -> tuple[float, float, float]:
    before = children_cpu()
    out, _, backend_cores = run_client(
        [native(), "benchmark", "--transport", "grpc", "--address", address,
         "--procedure", METHOD, "--concurrency", str(concurrency), "--duration", f"{duration}s",
         "--body", payload.decode(), "--threads", str(THREADS), "--json", "--quiet"],
        backend_pid, duration + 60)
    cpu = children_cpu() - before
    report = json.loads(out)
    if report["failures"]:
        sys.exit(f"omnirelay benchmark saw failures: {report['status_counts']}")
    return float(report["throughput_rps"]), cpu / max(1, report["requests"]) * 1e6, backend_cores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.runs < 3:
        sys.exit("--runs must be at least 3 (medians)")

    payload = b"x" * 64
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.bin"
        # gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length.
        body.write_bytes(struct.pack(">BI", 0, len(payload)) + payload)
        backend, address = start_backend()
        try:
            h2, ours = [], []
            for run in range(1, args.runs + 1):
                h2.append(run_h2load(address, body, args.concurrency, args.duration, backend.pid))
                ours.append(run_omnirelay(address, payload, args.concurrency, args.duration,
                                          backend.pid))
                print(f"run {run}: h2load {h2[-1][0]:9.0f} req/s ({h2[-1][1]:5.1f} us CPU/req, "
                      f"backend {h2[-1][2]:4.2f} cores)   omnirelay benchmark {ours[-1][0]:9.0f} req/s "
                      f"({ours[-1][1]:5.1f} us CPU/req, backend {ours[-1][2]:4.2f} cores)   "
                      f"ratio {ours[-1][0] / h2[-1][0]:4.2f}", flush=True)
        finally:
            backend.terminate()
            backend.wait(timeout=10)
    load_after = os.getloadavg()

    def med(values: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    backend_cores = max(med(h2, 2), med(ours, 2))
    print(f"\nconcurrency {args.concurrency}, {args.runs} runs of {args.duration}s each, medians "
          f"(load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
          f"{os.cpu_count()} CPUs):")
    print(f"  h2load               {med(h2, 0):9.0f} req/s  {med(h2, 1):6.1f} us CPU/req  "
          f"backend {med(h2, 2):4.2f} cores")
    print(f"  omnirelay benchmark  {med(ours, 0):9.0f} req/s  {med(ours, 1):6.1f} us CPU/req  "
          f"backend {med(ours, 2):4.2f} cores")
    print(f"  ratio                {med(ours, 0) / med(h2, 0):9.2f}x  (target >= 0.80)")
    print(f"  median of per-run ratios {statistics.median(o[0] / h[0] for o, h in zip(ours, h2)):5.2f}x")
    if backend_cores >= 0.95:
        print(f"  backend CPU {backend_cores:.2f} cores: the backend is (near) the bottleneck, "
              "the ratio does not measure the generators", file=sys.stderr)
        return 1
    print(f"  backend CPU {backend_cores:.2f} cores (< 1 core: not the bottleneck)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
