#!/usr/bin/env python3
"""The ceiling of `omnirelay benchmark` versus h2load against the same backend.

    benchmarks/benchmark_vs_h2load.py [--runs 5] [--duration 5] [--concurrency 16]

Starts one `omnirelay echo` backend on 127.0.0.1, then loads it alternately
with h2load (nghttp2-client; one connection, `--concurrency` streams, a 64-byte
gRPC unary echo framed by hand) and with `omnirelay benchmark` (one connection,
same concurrency, same body), and prints the median QPS of each and their
ratio. Target (issue 5): omnirelay benchmark >= 0.8x h2load.
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




def start_backend(workdir: Path) -> tuple[subprocess.Popen, str]:
    ready = workdir / "echo.json"
    process = subprocess.Popen(
        [native(), "echo", "--instance", "bench", "--grpc-address", "127.0.0.1:0",
         "--admin-address", "127.0.0.1:0", "--ready-file", str(ready), "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ready.exists():
            info = json.loads(ready.read_text())
            return process, info["grpc"]
        time.sleep(0.05)
    process.kill()
    sys.exit("echo backend did not become ready")


def run_h2load(address: str, body: Path, concurrency: int, duration: int) -> float:
    out = subprocess.run(
        ["h2load", "-c", "1", "-m", str(concurrency), "-D", str(duration), "-t", "1",
         "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
         f"http://{address}{METHOD}"],
        capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    match = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    if not match or not status or int(status.group(1)) == 0:
        sys.exit(f"h2load output not understood:\n{out}")
    return float(match.group(1))


def run_omnirelay(address: str, payload: bytes, concurrency: int, duration: int) -> float:
    out = subprocess.run(
        [native(), "benchmark", "--transport", "grpc", "--address", address,
         "--procedure", METHOD, "--concurrency", str(concurrency), "--duration", f"{duration}s",
         "--body", payload.decode(), "--threads", str(THREADS), "--json", "--quiet"],
        capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    report = json.loads(out)
    if report["failures"]:
        sys.exit(f"omnirelay benchmark saw failures: {report['status_counts']}")
    return float(report["throughput_rps"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    payload = b"x" * 64
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        body = workdir / "body.bin"
        # gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length.
        body.write_bytes(struct.pack(">BI", 0, len(payload)) + payload)
        backend, address = start_backend(workdir)
        try:
            h2, ours = [], []
            for run in range(1, args.runs + 1):
                h2.append(run_h2load(address, body, args.concurrency, args.duration))
                ours.append(run_omnirelay(address, payload, args.concurrency, args.duration))
                print(f"run {run}: h2load {h2[-1]:9.0f} req/s   omnirelay benchmark {ours[-1]:9.0f} req/s",
                      flush=True)
        finally:
            backend.terminate()
            backend.wait(timeout=10)
    h2_median, ours_median = statistics.median(h2), statistics.median(ours)
    print(f"\nconcurrency {args.concurrency}, {args.runs} runs of {args.duration}s, medians:")
    print(f"  h2load               {h2_median:9.0f} req/s")
    print(f"  omnirelay benchmark  {ours_median:9.0f} req/s")
    print(f"  ratio                {ours_median / h2_median:9.2f}x  (target >= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
