"""`omnirelay benchmark` (gRPC on nghttp2) end to end against the lean echo
backend of benchmarks/benchmark_vs_h2load.py: the two real processes the
ceiling comparison uses, so a broken backend or client fails here, in CI,
rather than only in the benchmark script."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from omnirelay.benchmark import run_benchmark

REPO = Path(__file__).resolve().parents[2]
METHOD = "/omnirelay.echo.v1.Echo/Echo"


def lean_echo_binary() -> Path:
    found = sorted(REPO.glob("build/*/cpp/omnirelay/benchmark/omnirelay-lean-echo"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    assert found, "omnirelay-lean-echo not built (cmake --build build/release --target omnirelay-lean-echo)"
    return found[0]


@pytest.fixture
def lean_echo():
    process = subprocess.Popen([str(lean_echo_binary()), "--address", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        match = re.match(r"listening (\S+)", line)
        assert match, f"lean echo did not start: {line!r}"
        yield match.group(1)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_benchmark_against_lean_echo_counts_every_call(lean_echo):
    result = run_benchmark(transport="grpc", address=lean_echo, procedure=METHOD, concurrency=8,
                           requests=400, body="x" * 64, threads=1, quiet=True)
    assert result.requests == 400
    assert result.successes == 400
    assert result.count("OK") == 400


def test_deadline_already_past_is_never_sent(lean_echo):
    result = run_benchmark(transport="grpc", address=lean_echo, procedure=METHOD, concurrency=2,
                           requests=20, body="x", deadline="2020-01-01T00:00:00Z", quiet=True)
    assert result.count("DEADLINE_EXCEEDED") == 20
    assert result.successes == 0


def test_nothing_listening_is_unavailable():
    # A port nothing listens on: bind one, close it, use it.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_benchmark(transport="grpc", address=f"127.0.0.1:{port}", procedure=METHOD,
                           concurrency=2, requests=10, body="x", quiet=True)
    assert result.count("UNAVAILABLE") == 10
