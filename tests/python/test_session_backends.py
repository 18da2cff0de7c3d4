"""Backends of the session-affinity gateway (issue 6), as real processes.

Starts `omnirelay-native registry`, `auth` and `worker` directly (never behind
a shell) on 127.0.0.1 with port 0, reads their ready files, and drives them
with python3-grpcio stubs generated at test time from
proto/my_service/my_service.proto (protoc + /usr/bin/grpc_python_plugin).
Every wait is bounded; every process is stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from omnirelay.harness.launcher import ReadyProcess
from omnirelay.harness.launcher import wait_until

grpc = pytest.importorskip("grpc")

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def _supports_session_verbs(binary: Path) -> bool:
    try:
        result = subprocess.run([str(binary), "worker", "--help"], capture_output=True,
                                timeout=10, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "--instance" in result.stdout


def _native_binary() -> Path:
    override = os.environ.get("OMNIRELAY_NATIVE_BIN")
    if override:
        return Path(override)
    candidates = sorted(REPO.glob("build/*/cpp/omnirelay/cli/omnirelay-native"),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and _supports_session_verbs(candidate):
            return candidate
    pytest.skip("no omnirelay-native with the auth/worker/registry verbs is built")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def native() -> Path:
    return _native_binary()


@pytest.fixture(scope="module")
def pb():
    """Generated my_service_pb2 / my_service_pb2_grpc modules (not committed):
    omnirelay.samples.my_service generates and caches them."""
    from omnirelay.samples import my_service

    try:
        pb2, pb2_grpc = my_service.stubs()
    except my_service.StubGenerationError as error:
        pytest.skip(f"cannot generate my_service stubs: {error}")

    class Stubs:
        messages = pb2
        services = pb2_grpc

    return Stubs


class Process(ReadyProcess):
    """One native process announced by its ready file; always stopped
    (the shared launcher, omnirelay.harness.launcher)."""

    def __init__(self, binary: Path, args: List[str], tmp_path: Path, name: str):
        super().__init__(args, tmp_path, name, binary=binary, start_timeout=START_TIMEOUT,
                         stop_timeout=STOP_TIMEOUT)

    @property
    def address(self) -> str:
        return self.ready["address"]

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


@pytest.fixture
def spawn(native, tmp_path):
    started: List[Process] = []

    def start(name: str, *args: str) -> Process:
        process = Process(native, list(args), tmp_path, name)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def registry(spawn, tmp_path) -> Process:
    # A short TTL lets the "killed worker leaves" check finish quickly.
    # Registrations are authenticated: the registry creates the token file the
    # workers read (start_worker).
    return spawn("registry", "registry", "--listen", "127.0.0.1:0", "--ttl", "1s",
                 "--token-file", str(tmp_path / "registry-token"), "--create-token")


@pytest.fixture
def auth(spawn, tmp_path) -> Process:
    return spawn("auth", "auth", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "state/users.db"),
                 "--jwt-secret-file", str(tmp_path / "state/jwt-secret"), "--create-secret",
                 "--token-ttl", "10m")


def start_worker(spawn, name: str, registry: Optional[Process] = None, *extra: str) -> Process:
    args = ["worker", "--listen", "127.0.0.1:0", "--instance", name,
            "--stream-interval", "20ms", "--heartbeat-interval", "200ms"]
    if registry is not None:
        args += ["--registry", registry.address,
                 "--registry-token-file", str(registry.ready_file.parent / "registry-token")]
    return spawn(name, *args, *extra)


def registered(registry: Process, role: str = "worker") -> List[Dict[str, str]]:
    with urllib.request.urlopen(f"http://{registry.address}/instances?role={role}",
                                timeout=5) as response:
        assert response.status == 200
        return json.loads(response.read())



def stub(pb, process: Process):
    channel = grpc.insecure_channel(process.address)
    return pb.services.MyServiceAPIStub(channel), channel


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def session(value: str, token: Optional[str] = None):
    metadata = [("session-id", value)]
    if token is not None:
        metadata.append(("authorization", token))
    return metadata


# ---------------------------------------------------------------- auth service


def test_login_errors_and_token(pb, auth, tmp_path):
    client, channel = stub(pb, auth)
    m = pb.messages
    with channel:
        cases = [
            (m.LoginRequest(username="", password="testpass", session_id="s1"),
             grpc.StatusCode.INVALID_ARGUMENT, "username is required"),
            (m.LoginRequest(username="testuser", password="testpass", session_id=""),
             grpc.StatusCode.INVALID_ARGUMENT, "session_id is required"),
            (m.LoginRequest(username="testuser", password="wrong", session_id="s1"),
             grpc.StatusCode.PERMISSION_DENIED, "invalid username or password"),
            (m.LoginRequest(username="nobody", password="testpass", session_id="s1"),
             grpc.StatusCode.PERMISSION_DENIED, "invalid username or password"),
        ]
        for request, code, message in cases:
            error = rpc_error(lambda: client.Login(request, timeout=10))
            assert (error.code(), error.details()) == (code, message), request

        before = time.time()
        reply = client.Login(m.LoginRequest(username="testuser", password="testpass",
                                            session_id="s1"), timeout=10)
        assert reply.role == "user"
        assert reply.token.count(".") == 2
        # --token-ttl 10m; JWT expiry has whole-second precision.
        assert before + 600 - 2 <= reply.expires_at.seconds <= time.time() + 600
        other = client.Login(m.LoginRequest(username="testuser", password="testpass",
                                            session_id="s2"), timeout=10)
        assert other.token != reply.token

    secret = tmp_path / "state/jwt-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) == 64
    assert stat.S_IMODE((tmp_path / "state/users.db").stat().st_mode) == 0o600


def test_auth_restart_keeps_secret_and_users(pb, spawn, tmp_path):
    args = ["auth", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "users.db"),
            "--jwt-secret-file", str(tmp_path / "secret"), "--create-secret"]
    first = spawn("auth1", *args)
    secret = (tmp_path / "secret").read_text()
    assert first.stop() == 0
    second = spawn("auth2", *args)
    assert (tmp_path / "secret").read_text() == secret
    client, channel = stub(pb, second)
    with channel:
        reply = client.Login(pb.messages.LoginRequest(username="testuser", password="testpass",
                                                      session_id="s"), timeout=10)
    assert reply.token


# -------------------------------------------------------------------- workers


def test_echo_binds_first_session_and_rejects_others(pb, spawn):
    w1 = start_worker(spawn, "pod-1")
    w2 = start_worker(spawn, "pod-2")
    m = pb.messages
    c1, ch1 = stub(pb, w1)
    c2, ch2 = stub(pb, w2)
    with ch1, ch2:
        first = c1.MyServiceEcho(m.EchoRequest(value="hello"), metadata=session("A"), timeout=10)
        assert (first.client_value, first.server_value, first.pod_name, first.client_session_id,
                first.index, first.server_method) == ("hello", "my_service", "pod-1", "A", 0,
                                                      "MyServiceEcho")
        assert first.server_session_id
        again = c1.MyServiceEcho(m.EchoRequest(value="x"), metadata=session("A"), timeout=10)
        assert again.server_session_id == first.server_session_id

        error = rpc_error(lambda: c1.MyServiceEcho(m.EchoRequest(value="x"),
                                                   metadata=session("B"), timeout=10))
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == "Session conflict: was=A, now=B"

        other = c2.MyServiceEcho(m.EchoRequest(value="y"), metadata=session("B"), timeout=10)
        assert (other.pod_name, other.client_session_id) == ("pod-2", "B")
        assert other.server_session_id != first.server_session_id

        error = rpc_error(lambda: c2.MyServiceEcho(m.EchoRequest(value="y"), timeout=10))
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                   "missing session-id")


def test_subscribe_streams_increasing_index(pb, spawn):
    worker = start_worker(spawn, "pod-s")
    client, channel = stub(pb, worker)
    with channel:
        call = client.MyServiceSubscribe(pb.messages.EchoRequest(value="sub"),
                                         metadata=session("S"), timeout=20)
        indices = []
        for message in call:
            assert (message.pod_name, message.client_session_id, message.server_method,
                    message.client_value) == ("pod-s", "S", "MyServiceSubscribe", "sub")
            indices.append(message.index)
            if len(indices) == 5:
                call.cancel()
                break
        assert indices == [0, 1, 2, 3, 4]
        # The stream bound the instance to S.
        error = rpc_error(lambda: client.MyServiceEcho(pb.messages.EchoRequest(value="x"),
                                                       metadata=session("T"), timeout=10))
        assert error.details() == "Session conflict: was=S, now=T"


def test_shutdown_rules_then_worker_exits_and_leaves_registry(pb, spawn, registry):
    worker = start_worker(spawn, "pod-x", registry)
    assert registered(registry) == [{"id": "pod-x", "address": worker.address, "role": "worker"}]
    client, channel = stub(pb, worker)
    m = pb.messages
    with channel:
        error = rpc_error(lambda: client.MyServiceShutdown(m.ShutdownRequest(),
                                                           metadata=session("A"), timeout=10))
        assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                                   "Server session is not set")
        echo = client.MyServiceEcho(m.EchoRequest(value="v"), metadata=session("A"), timeout=10)
        error = rpc_error(lambda: client.MyServiceShutdown(m.ShutdownRequest(),
                                                           metadata=session("B"), timeout=10))
        assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                                   "Client session mismatch: client=B, server=A")
        assert worker.popen.poll() is None  # refused shutdowns do not stop it

        reply = client.MyServiceShutdown(m.ShutdownRequest(), metadata=session("A"), timeout=10)
        assert (reply.pod_name, reply.client_session_id, reply.server_session_id,
                reply.server_method) == ("pod-x", "A", echo.server_session_id, "MyServiceShutdown")
    assert worker.wait_exit(10) == 0, worker.log()
    # A clean exit unregisters at once (well before the 1 s TTL would).
    assert registered(registry) == []


def test_worker_appears_in_and_disappears_from_registry(pb, spawn, registry):
    w1 = start_worker(spawn, "pod-1", registry)
    w2 = start_worker(spawn, "pod-2", registry)
    assert registered(registry) == [
        {"id": "pod-1", "address": w1.address, "role": "worker"},
        {"id": "pod-2", "address": w2.address, "role": "worker"},
    ]
    # Heartbeats keep entries alive well past the 1 s TTL.
    time.sleep(2.0)
    assert [entry["id"] for entry in registered(registry)] == ["pod-1", "pod-2"]

    assert w1.stop(signal.SIGTERM) == 0
    assert [entry["id"] for entry in registered(registry)] == ["pod-2"]

    # SIGKILL: no unregister; the entry expires after the TTL.
    w2.stop(signal.SIGKILL)
    wait_until(lambda: registered(registry) == [], timeout=5, what="pod-2 to expire")


def test_worker_verifies_tokens_issued_by_auth(pb, spawn, auth, tmp_path):
    worker = start_worker(spawn, "pod-v", None, "--jwt-secret-file",
                          str(tmp_path / "state/jwt-secret"))
    m = pb.messages
    a, ach = stub(pb, auth)
    w, wch = stub(pb, worker)
    with ach, wch:
        token = a.Login(m.LoginRequest(username="testuser", password="testpass",
                                       session_id="S1"), timeout=10).token
        error = rpc_error(lambda: w.MyServiceEcho(m.EchoRequest(value="x"),
                                                  metadata=session("S1"), timeout=10))
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                   "missing or invalid token")
        # The session is checked before the token, as on the gateway.
        error = rpc_error(lambda: w.MyServiceEcho(m.EchoRequest(value="x"), timeout=10))
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                   "missing session-id")
        error = rpc_error(lambda: w.MyServiceEcho(m.EchoRequest(value="x"),
                                                  metadata=session("S2", token), timeout=10))
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                   "missing or invalid token")
        error = rpc_error(lambda: w.MyServiceEcho(m.EchoRequest(value="x"),
                                                  metadata=session("S1", "Bearer " + token),
                                                  timeout=10))
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                   "missing or invalid token")
        reply = w.MyServiceEcho(m.EchoRequest(value="x"), metadata=session("S1", token),
                                timeout=10)
        assert reply.client_session_id == "S1"


def test_subscription_period_defaults_to_five_seconds(pb, spawn):
    """The reference's subscription period: index 0 at once, then one message
    every 5 s unless --stream-interval says otherwise (issue 16). Only a lower
    bound is asserted: a loaded host makes the gap longer, never shorter."""
    worker = spawn("pod-period", "worker", "--listen", "127.0.0.1:0", "--instance", "pod-period")
    client, channel = stub(pb, worker)
    with channel:
        call = client.MyServiceSubscribe(pb.messages.EchoRequest(value="slow"),
                                         metadata=session("P"), timeout=30)
        first = next(call)
        started = time.monotonic()
        second = next(call)
        gap = time.monotonic() - started
        call.cancel()
    assert (first.index, second.index) == (0, 1)
    assert gap >= 4.0, gap  # the old default was 100 ms
