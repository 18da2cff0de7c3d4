"""The installed `omnirelay` command: help, version, and `serve` answering on
its admin endpoints, draining on SIGTERM, failing clearly on bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from omnirelay._native import find_native_binary


def omnirelay_command():
    """The console script of the environment under test, else `python -m omnirelay`."""
    script = Path(sys.executable).with_name("omnirelay")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "omnirelay"]


def run(*args, **kwargs):
    return subprocess.run([*omnirelay_command(), *args], capture_output=True, text=True, timeout=60, **kwargs)


def test_help_lists_native_verbs():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "version" in result.stdout


def test_version():
    result = run("version")
    assert result.returncode == 0
    assert result.stdout.startswith("omnirelay ")


def wait_for_file(path: Path, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def test_serve_answers_and_drains_on_sigterm(tmp_path):
    ready_file = tmp_path / "ready.json"
    process = subprocess.Popen(
        [str(find_native_binary()), "serve", "--name", "t1", "--admin-address", "127.0.0.1:0",
         "--ready-file", str(ready_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready = wait_for_file(ready_file)
        assert ready["pid"] == process.pid
        base = f"http://{ready['admin']}"
        status, body, _ = get(base + "/healthz")
        assert (status, json.loads(body)["status"]) == (200, "ok")
        status, body, _ = get(base + "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        status, body, _ = get(base + "/omnirelay/introspect")
        assert status == 200 and json.loads(body)["service"] == "t1"
        status, body, headers = get(base + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        _, stderr = process.communicate(timeout=5)
        events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
        assert events == ["node.ready", "node.draining", "node.stopped"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_rejects_a_bad_address():
    result = subprocess.run(
        [str(find_native_binary()), "serve", "--admin-address", "no-port-here"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "--admin-address" in result.stderr and "host:port" in result.stderr


def test_serve_reports_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(find_native_binary()), "serve", "--admin-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


# Hostile or mistyped input: every verb answers with a message and exit code 2
# (usage) or 1 (failure), never a crash (signal), an abort or a traceback.
HOSTILE_ARGV = [
    (["serve", "--admin-address", "127.0.0.1:99999999999999999999"], 2),
    (["serve", "--admin-address", "127.0.0.1:65536"], 2),
    (["serve", "--set"], 2),
    (["serve", "--no-such-flag"], 2),
    (["no-such-verb"], 2),
    (["echo", "--latency", "nan"], 2),
    (["echo", "--latency", "1e999h"], 2),
    (["benchmark", "--duration", "99999999999999999999h"], None),
    (["benchmark", "--concurrency", "abc"], 2),
    (["config", "validate", "--config", "/nonexistent/omnirelay.yaml"], None),
    (["serve", "--config", "/nonexistent/omnirelay.yaml"], None),
    (["serve", "--set", "inbounds.grpc.address=127.0.0.1:70000"], None),
    (["up", "no-such-topology"], None),
    (["scenario", "run", "no-such-scenario"], None),
    (["stack", "ps", "--control", "/nonexistent/control.json"], None),
    (["registry", "--listen", "127.0.0.1:0"], 2),  # registrations would be unauthenticated
    (["registry", "--tls-cert-file", "/nonexistent.crt", "--tls-key-file", "/nonexistent.key",
      "--tls-ca-file", "/nonexistent-ca.crt", "--tls-client-cert", "require"], 2),
    (["worker", "--instance", "w", "--tls-client-cert", "require", "--tls-ca-file", "/x"], 2),
    (["auth", "--tls-client-cert", "sometimes"], 2),
    (["benchmark", "--procedure", "a/b", "--requests", "1", "--address", "127.0.0.1:1",
      "--tls-ca-file", "/nonexistent-ca.crt"], 2),
]


@pytest.mark.parametrize("argv,expected", HOSTILE_ARGV, ids=[" ".join(a) for a, _ in HOSTILE_ARGV])
def test_no_input_crashes_a_verb(argv, expected):
    result = run(*argv)
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-2000:])
    if expected is not None:
        assert result.returncode == expected, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "terminate called" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip() or result.stdout.strip(), "a refusal must say why"
