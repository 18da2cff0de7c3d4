"""Gateway mode of a node (issue 6) with real processes.

registry + auth + 3 workers + a gateway node (`omnirelay-native serve` with a
`gateway` section), all on 127.0.0.1 with port 0, started directly (never
behind a shell), read through their ready files and stopped with SIGTERM then
SIGKILL. python3-grpcio stubs are generated at test time from
proto/my_service/my_service.proto. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from omnirelay.harness.launcher import ReadyProcess, wait_until

from dataplane_support import metric_total as metric

grpc = pytest.importorskip("grpc")

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
CALL_TIMEOUT = 20.0
REFRESH = "200ms"
SUBSCRIBE = "/my_service.MyServiceAPI/MyServiceSubscribe"


def _native_binary() -> Path:
    override = os.environ.get("OMNIRELAY_NATIVE_BIN")
    if override:
        return Path(override)
    for candidate in sorted(REPO.glob("build/*/cpp/omnirelay/cli/omnirelay-native"),
                            key=lambda p: p.stat().st_mtime, reverse=True):
        if not os.access(candidate, os.X_OK):
            continue
        try:  # a binary with the gateway section (config validate knows the key)
            probe = subprocess.run([str(candidate), "worker", "--help"], capture_output=True,
                                   text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and "--instance" in probe.stdout and \
                b"omnirelay.gateway.requests" in candidate.read_bytes():
            return candidate
    pytest.skip("no omnirelay-native with gateway mode is built")
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



class Stack:
    """registry, auth, N workers and the gateway node."""

    def __init__(self, native: Path, tmp_path: Path, pb, workers: int = 3, *,
                 transfer_streams: bool = True, worker_args: Optional[List[str]] = None,
                 data_path: str = "auto", registry_ttl: str = "5s",
                 workers_cluster: Optional[Dict[str, Any]] = None):
        self.native, self.tmp, self.pb = native, tmp_path, pb
        self.worker_args = list(worker_args or [])
        self.processes: List[Process] = []
        self.workers: Dict[str, Process] = {}
        self.registry_token = tmp_path / "registry-token"
        self.registry = self.spawn("registry", "registry", "--listen", "127.0.0.1:0",
                                   "--ttl", registry_ttl, "--token-file", str(self.registry_token),
                                   "--create-token")
        secret = tmp_path / "state" / "jwt-secret"
        self.auth = self.spawn("auth", "auth", "--listen", "127.0.0.1:0",
                               "--db", str(tmp_path / "state" / "users.db"),
                               "--jwt-secret-file", str(secret), "--create-secret",
                               "--token-ttl", "10m")
        for i in range(1, workers + 1):
            self.start_worker(f"worker-{i}")
        self.wait_registered(workers)
        config = {"omniRelay": {
            "service": "gateway",
            "admin": {"address": "127.0.0.1:0"},
            "gateway": {
                "address": "127.0.0.1:0",
                "jwt": {"secretFile": str(secret)},
                "clusters": {
                    "auth": {"endpoints": [self.auth.address]},
                    "workers": {"registry": self.registry.address, "role": "worker",
                                "refreshInterval": REFRESH, **(workers_cluster or {})}},
                "routes": [
                    {"prefix": "/my_service.MyServiceAPI/Login", "cluster": "auth",
                     "authorization": "none", "balancer": "round-robin", "dataPath": data_path},
                    {"prefix": "/my_service.MyServiceAPI/MyService", "cluster": "workers",
                     "authorization": "required", "balancer": "sticky",
                     "stickyHeader": "session-id",
                     "transferStreams": [SUBSCRIBE] if transfer_streams else [],
                     "dataPath": data_path}],
                "defaultRoute": {"error": "UNIMPLEMENTED"},
                "maxAttempts": 3,
                "attemptTimeout": "5s"}}}
        config_file = tmp_path / "gateway.json"
        config_file.write_text(json.dumps(config))
        self.gateway = self.spawn("gateway", "serve", "--config", str(config_file))
        assert self.gateway.ready["gateway"].startswith("127.0.0.1:")
        self.admin = self.gateway.ready["admin"]
        self.channels: List[Any] = []

    def spawn(self, name: str, *args: str) -> Process:
        process = Process(self.native, list(args), self.tmp, name)
        self.processes.append(process)
        return process

    def start_worker(self, name: str) -> Process:
        worker = self.spawn(name, "worker", "--listen", "127.0.0.1:0", "--instance", name,
                            "--registry", self.registry.address,
                            "--registry-token-file", str(self.registry_token), "--stream-interval", "20ms",
                            "--heartbeat-interval", "200ms", *self.worker_args)
        self.workers[name] = worker
        return worker

    def registered(self) -> List[Dict[str, str]]:
        with urllib.request.urlopen(f"http://{self.registry.address}/instances?role=worker",
                                    timeout=5) as response:
            return json.loads(response.read())

    def wait_registered(self, count: int) -> None:
        wait_until(lambda: len(self.registered()) == count, 10, f"{count} registered workers")

    def wait_gateway_members(self, count: int) -> None:
        wait_until(lambda: len(self.introspect()["clusters"]["workers"]["members"]) == count,
                   10, f"{count} gateway members")

    def client(self):
        channel = grpc.insecure_channel(self.gateway.ready["gateway"])
        self.channels.append(channel)
        return self.pb.services.MyServiceAPIStub(channel)

    def login(self, session_id: str) -> str:
        reply = self.client().Login(self.pb.messages.LoginRequest(
            username="testuser", password="testpass", session_id=session_id),
            timeout=CALL_TIMEOUT)
        return reply.token

    def echo(self, session_id: str, token: Optional[str], value: str = "v", client=None):
        metadata = [("session-id", session_id)]
        if token is not None:
            metadata.append(("authorization", token))
        return (client or self.client()).MyServiceEcho(
            self.pb.messages.EchoRequest(value=value), metadata=metadata, timeout=CALL_TIMEOUT)

    def shutdown(self, session_id: str, token: str):
        return self.client().MyServiceShutdown(
            self.pb.messages.ShutdownRequest(),
            metadata=[("session-id", session_id), ("authorization", token)],
            timeout=CALL_TIMEOUT)

    def introspect(self) -> Dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.admin}/omnirelay/gateway", timeout=5) as r:
            return json.loads(r.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=5) as r:
            return r.read().decode()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for process in reversed(self.processes):
            process.stop()


# Every test runs on both data paths (docs/session-gateway.md "Data path"):
# the frame relay (admission and the sticky pick on HEADERS, frames pumped;
# transferStreams methods still through grpc++) and the grpc++ path.
@pytest.fixture(params=["frame", "grpc"])
def data_path(request) -> str:
    return request.param


@pytest.fixture
def stack(native, tmp_path, pb, data_path):
    s = Stack(native, tmp_path, pb, data_path=data_path)
    yield s
    s.close()


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# --------------------------------------------------------------------- tests


def test_login_and_sticky_echo_on_one_pod(stack, data_path):
    # The path asked for is the path taken: the relay owns the gateway's port.
    view = stack.introspect()
    assert view["frameRelay"] is (data_path == "frame")
    assert {r["dataPath"] for r in view["routes"]} == {data_path}
    token = stack.login("sticky-1")
    assert token.count(".") == 2
    client = stack.client()
    replies = [stack.echo("sticky-1", token, f"v{i}", client=client) for i in range(5)]
    pods = {r.pod_name for r in replies}
    assert pods == {"worker-1"}  # the first free instance in rotation order
    first = replies[0]
    assert (first.client_value, first.server_value, first.client_session_id, first.index,
            first.server_method) == ("v0", "my_service", "sticky-1", 0, "MyServiceEcho")
    assert len({r.server_session_id for r in replies}) == 1
    # A second session lands on another pod and stays there.
    token2 = stack.login("sticky-2")
    assert {stack.echo("sticky-2", token2).pod_name for _ in range(3)} == {"worker-2"}
    assert stack.echo("sticky-1", token).pod_name == "worker-1"
    bindings = stack.introspect()["clusters"]["workers"]["bindings"]
    assert bindings == {"sticky-1": "worker-1", "sticky-2": "worker-2"}
    text = stack.metrics()
    assert metric(text, "omnirelay_gateway_sessions", cluster="workers") == 2
    assert metric(text, "omnirelay_gateway_requests_total", status="OK") >= 10
    # Unrouted methods get the default route's error.
    unrouted = grpc.insecure_channel(stack.gateway.ready["gateway"])
    stack.channels.append(unrouted)
    error = rpc_error(lambda: unrouted.unary_unary("/other.Service/Call")(b"", timeout=5))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_three_sessions_occupy_three_instances_fourth_is_busy(stack):
    sessions = [f"overload-{i}" for i in range(4)]
    tokens = {s: stack.login(s) for s in sessions}  # login never depends on workers
    pods = {s: stack.echo(s, tokens[s]).pod_name for s in sessions[:3]}
    assert sorted(pods.values()) == ["worker-1", "worker-2", "worker-3"]
    error = rpc_error(lambda: stack.echo(sessions[3], tokens[sessions[3]]))
    assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                               "all instances are busy")
    # The busy answer did not disturb anyone; application errors do not evict.
    for s in sessions[:3]:
        assert stack.echo(s, tokens[s]).pod_name == pods[s]
    # Shutdown of a session that is not the instance's: passed through, no eviction.
    error = rpc_error(lambda: stack.client().MyServiceShutdown(
        stack.pb.messages.ShutdownRequest(),
        metadata=[("session-id", sessions[3]), ("authorization", tokens[sessions[3]])],
        timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stack.introspect()["clusters"]["workers"]["bindings"] == pods
    text = stack.metrics()
    assert metric(text, "omnirelay_gateway_requests_total", status="RESOURCE_EXHAUSTED") == 2
    assert metric(text, "omnirelay_gateway_evictions_total") == 0


def test_authentication_errors(stack):
    token = stack.login("auth-1")
    other = stack.login("auth-2")
    m = stack.pb.messages
    # The session first, then one message for every token failure (issue 16).
    cases = [
        ([], "missing session-id"),
        ([("authorization", "not-a-jwt")], "missing session-id"),
        ([("authorization", token)], "missing session-id"),
        ([("session-id", ""), ("authorization", token)], "missing session-id"),
        ([("session-id", "auth-1")], "missing or invalid token"),
        ([("session-id", "auth-1"), ("authorization", "")], "missing or invalid token"),
        ([("session-id", "auth-1"), ("authorization", "not-a-jwt")], "missing or invalid token"),
        ([("session-id", "auth-1"), ("authorization", "Bearer " + token)],
         "missing or invalid token"),
        ([("session-id", "auth-1"), ("authorization", other)], "missing or invalid token"),
    ]
    client = stack.client()
    for metadata, message in cases:
        for call in (lambda md=metadata: client.MyServiceEcho(m.EchoRequest(value="x"),
                                                                metadata=md,
                                                                timeout=CALL_TIMEOUT),
                     lambda md=metadata: list(client.MyServiceSubscribe(
                         m.EchoRequest(value="x"), metadata=md, timeout=CALL_TIMEOUT))):
            error = rpc_error(call)
            assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                       message), metadata
    # Rejected calls bound nothing; a valid call still works.
    assert stack.introspect()["clusters"]["workers"]["bindings"] == {}
    assert stack.echo("auth-1", token).pod_name == "worker-1"
    # Login errors from the auth node pass through unchanged.
    error = rpc_error(lambda: client.Login(m.LoginRequest(username="testuser", password="bad",
                                                          session_id="x"),
                                           timeout=CALL_TIMEOUT))
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                               "invalid username or password")


def test_subscribe_streams_through_gateway_and_cancel_keeps_binding(stack):
    token = stack.login("stream-1")
    md = [("session-id", "stream-1"), ("authorization", token)]
    stream = stack.client().MyServiceSubscribe(stack.pb.messages.EchoRequest(value="sub"),
                                               metadata=md, timeout=CALL_TIMEOUT)
    got = []
    for reply in stream:
        got.append(reply)
        if len(got) == 5:
            break
    stream.cancel()
    assert [r.index for r in got] == [0, 1, 2, 3, 4]
    assert {r.pod_name for r in got} == {"worker-1"}
    assert {r.server_method for r in got} == {"MyServiceSubscribe"}
    assert {r.client_value for r in got} == {"sub"}
    # The cancellation reaches the worker: the backend call ends (the worker
    # would otherwise stream for 10000 x 20 ms), counted as a finished attempt.
    wait_until(lambda: metric(stack.metrics(), "omnirelay_gateway_attempts_total",
                              cluster="workers", outcome="ok") == 1, 5,
               "the backend stream to end after the client's cancel")
    # A cancelled stream is an application-level end: the binding stays and
    # the next call reaches the same pod.
    assert stack.echo("stream-1", token).pod_name == "worker-1"
    assert stack.introspect()["clusters"]["workers"]["bindings"] == {"stream-1": "worker-1"}


def test_session_transfer_after_shutdown(stack):
    token = stack.login("transfer-1")
    assert stack.echo("transfer-1", token).pod_name == "worker-1"
    seen = ["worker-1"]
    for expected in ("worker-2", "worker-3"):
        reply = stack.shutdown("transfer-1", token)
        assert (reply.pod_name, reply.client_session_id) == (seen[-1], "transfer-1")
        # The very next call (the instance is draining or gone) moves the session
        # to the next free instance in rotation order.
        moved = stack.echo("transfer-1", token)
        assert moved.pod_name == expected
        assert moved.client_session_id == "transfer-1"
        seen.append(expected)
        assert stack.workers[seen[-2]].wait_exit(10) == 0
    assert stack.introspect()["clusters"]["workers"]["bindings"] == {"transfer-1": "worker-3"}
    text = stack.metrics()
    assert metric(text, "omnirelay_gateway_session_transfers_total", cluster="workers") == 2


def test_all_workers_stopped_is_unavailable_then_resumes(stack):
    token = stack.login("down-1")
    assert stack.echo("down-1", token).pod_name == "worker-1"
    # Killed (still registered until the TTL): every connect fails.
    for worker in stack.workers.values():
        worker.stop(signal.SIGKILL)
    error = rpc_error(lambda: stack.echo("down-1", token))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE,
                                               "backend service unavailable")
    token2 = stack.login("down-2")  # login does not depend on workers
    error = rpc_error(lambda: stack.echo("down-2", token2))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE,
                                               "backend service unavailable")
    # Registry empties (TTL); a session that had an instance stays UNAVAILABLE,
    # a brand-new one learns there is nothing registered.
    stack.wait_registered(0)
    stack.wait_gateway_members(0)
    error = rpc_error(lambda: stack.echo("down-1", token))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE,
                                               "backend service unavailable")
    token3 = stack.login("down-3")
    error = rpc_error(lambda: stack.echo("down-3", token3))
    assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                               "no available instances")
    # Start them again: service resumes.
    for name in ("worker-1", "worker-2", "worker-3"):
        stack.start_worker(name)
    stack.wait_gateway_members(3)
    assert stack.echo("down-1", token).pod_name.startswith("worker-")
    text = stack.metrics()
    assert metric(text, "omnirelay_gateway_evictions_total", reason="transport_failure") >= 1


# ------------------------------------------------------- live stream transfer (issue 16)


def _subscribe(stack, session_id: str, token: str, value: str = "live"):
    md = [("session-id", session_id), ("authorization", token)]
    return stack.client().MyServiceSubscribe(stack.pb.messages.EchoRequest(value=value),
                                             metadata=md, timeout=60)


def _read_until_pod_changes(stream, pod: str, want: int = 3):
    """Messages still from ``pod``, then ``want`` messages from the next pod."""
    before, after = [], []
    deadline = time.monotonic() + 20
    for reply in stream:
        assert time.monotonic() < deadline, (before, after)
        if reply.pod_name == pod and not after:
            before.append(reply)
            continue
        after.append(reply)
        if len(after) == want:
            break
    return before, after


def _drain(stream, pod: str) -> None:
    for reply in stream:
        assert reply.pod_name == pod, reply  # nowhere else to go
    raise AssertionError("the stream ended OK")


def test_live_stream_moves_to_another_instance_when_its_instance_is_killed(stack):
    token = stack.login("live-1")
    stream = _subscribe(stack, "live-1", token)
    first = [next(stream) for _ in range(3)]
    assert [(r.pod_name, r.index) for r in first] == [("worker-1", 0), ("worker-1", 1),
                                                     ("worker-1", 2)]
    # kill -9 under the live stream: the same client stream continues on the
    # next free instance, which starts its own server session at index 0.
    stack.workers["worker-1"].stop(signal.SIGKILL)
    before, after = _read_until_pod_changes(stream, "worker-1")
    assert [r.index for r in before] == list(range(3, 3 + len(before)))
    assert [(r.pod_name, r.index) for r in after] == [("worker-2", 0), ("worker-2", 1),
                                                     ("worker-2", 2)]
    assert {r.client_value for r in after} == {"live"}
    assert {r.client_session_id for r in after} == {"live-1"}
    assert {r.server_method for r in after} == {"MyServiceSubscribe"}
    assert after[0].server_session_id.startswith("worker-2-")
    assert stack.introspect()["clusters"]["workers"]["bindings"] == {"live-1": "worker-2"}
    # Again: the stream outlives a second instance.
    stack.workers["worker-2"].stop(signal.SIGKILL)
    _, after = _read_until_pod_changes(stream, "worker-2")
    assert [(r.pod_name, r.index) for r in after] == [("worker-3", 0), ("worker-3", 1),
                                                     ("worker-3", 2)]
    text = stack.metrics()
    assert metric(text, "omnirelay_gateway_stream_transfers_total", cluster="workers") == 2
    assert metric(text, "omnirelay_gateway_evictions_total", reason="transport_failure") >= 2
    # The session's unary calls follow the stream.
    assert stack.echo("live-1", token).pod_name == "worker-3"
    # No instance left to take it: the stream ends UNAVAILABLE with the
    # gateway's message (not the transport's "Socket closed").
    stack.workers["worker-3"].stop(signal.SIGKILL)
    error = rpc_error(lambda: _drain(stream, "worker-3"))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE,
                                               "backend service unavailable")


def test_graceful_stop_moves_the_stream_and_cancel_still_reaches_the_new_instance(stack):
    token = stack.login("live-2")
    stream = _subscribe(stack, "live-2", token)
    assert next(stream).pod_name == "worker-1"
    # SIGTERM: the worker ends the stream UNAVAILABLE "instance is shutting
    # down" and leaves the registry; the stream moves all the same.
    assert stack.workers["worker-1"].stop(signal.SIGTERM) == 0
    _, after = _read_until_pod_changes(stream, "worker-1", want=2)
    assert [(r.pod_name, r.index) for r in after] == [("worker-2", 0), ("worker-2", 1)]
    stream.cancel()
    # The client's cancel is not a failure: nothing moves, the binding stays.
    wait_until(lambda: metric(stack.metrics(), "omnirelay_gateway_attempts_total",
                              cluster="workers", outcome="ok") == 1, 10,
               "the transferred backend stream to end after the client's cancel")
    assert stack.introspect()["clusters"]["workers"]["bindings"] == {"live-2": "worker-2"}
    assert metric(stack.metrics(), "omnirelay_gateway_stream_transfers_total",
                  cluster="workers") == 1


def test_application_end_of_stream_is_not_transferred(native, tmp_path, pb, data_path):
    stack = Stack(native, tmp_path, pb, worker_args=["--stream-max-messages", "4"],
                  data_path=data_path)
    try:
        token = stack.login("bounded-1")
        # The worker ends the stream OK after 4 messages: passed through as is,
        # not replayed elsewhere.
        replies = list(_subscribe(stack, "bounded-1", token))
        assert [(r.pod_name, r.index) for r in replies] == [("worker-1", i) for i in range(4)]
        assert stack.introspect()["clusters"]["workers"]["bindings"] == {"bounded-1": "worker-1"}
        text = stack.metrics()
        assert metric(text, "omnirelay_gateway_stream_transfers_total") == 0
        assert metric(text, "omnirelay_gateway_evictions_total") == 0
    finally:
        stack.close()


def test_stream_outside_transfer_streams_ends_with_the_failure(native, tmp_path, pb, data_path):
    stack = Stack(native, tmp_path, pb, transfer_streams=False, data_path=data_path)
    try:
        token = stack.login("plain-1")
        stream = _subscribe(stack, "plain-1", token)
        assert next(stream).pod_name == "worker-1"
        stack.workers["worker-1"].stop(signal.SIGKILL)
        error = rpc_error(lambda: _drain(stream, "worker-1"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() != "backend service unavailable"  # the transport's own
        # The binding was dropped all the same: the next call moves.
        assert stack.echo("plain-1", token).pod_name == "worker-2"
        assert metric(stack.metrics(), "omnirelay_gateway_stream_transfers_total") == 0
    finally:
        stack.close()


# ------------------------------------------------- instances as peer-kit peers (issue 15)


def test_instances_are_peers_with_lease_metrics_and_a_breaker(native, tmp_path, pb, data_path):
    """Every gateway attempt leases its instance from the peer kit: the
    omnirelay.peer.* series count the gateway's calls per instance, and the
    instance's breaker ejects a dead worker (one failure opens it here; the
    registry TTL is long, so the dead worker stays listed the whole time)."""
    stack = Stack(native, tmp_path, pb, data_path=data_path, registry_ttl="120s",
                  workers_cluster={"circuitBreaker": {"consecutiveFailures": 1,
                                                      "openDelay": "120s"}})
    try:
        tokens = {s: stack.login(s) for s in ("peer-1", "peer-2", "peer-3")}
        assert {stack.echo("peer-1", tokens["peer-1"]).pod_name for _ in range(3)} == {"worker-1"}
        assert {stack.echo("peer-2", tokens["peer-2"]).pod_name for _ in range(2)} == {"worker-2"}
        text = stack.metrics()
        successes = "omnirelay_peer_successes_total"
        assert metric(text, successes, rpc_service="workers", rpc_peer="worker-1") == 3
        assert metric(text, successes, rpc_service="workers", rpc_peer="worker-2") == 2
        assert metric(text, successes, rpc_service="workers", rpc_peer="worker-3") == 0
        assert metric(text, "omnirelay_peer_lease_duration_seconds_count",
                      rpc_service="workers", rpc_peer="worker-1") == 3
        # The round-robin Login route's instance is a peer too (id = address).
        assert metric(text, successes, rpc_service="auth", rpc_peer=stack.auth.address) == 3
        view = stack.introspect()["clusters"]["workers"]
        assert view["chooser"] == "sticky"
        assert {m["id"]: m["breaker"] for m in view["members"]} == {
            "worker-1": "closed", "worker-2": "closed", "worker-3": "closed"}

        # kill -9: still registered (TTL 120 s), so only the breaker can keep
        # calls away from it.
        stack.workers["worker-1"].stop(signal.SIGKILL)
        moved = stack.echo("peer-1", tokens["peer-1"])
        assert moved.pod_name == "worker-3"  # worker-2 holds peer-2
        text = stack.metrics()
        assert metric(text, "omnirelay_peer_failures_total", rpc_service="workers",
                      rpc_peer="worker-1") == 1
        assert metric(text, "omnirelay_peer_breaker_transitions_total", rpc_peer="worker-1",
                      peer_breaker_to="open") == 1
        members = {m["id"]: m for m in stack.introspect()["clusters"]["workers"]["members"]}
        assert (members["worker-1"]["breaker"], members["worker-1"]["eligible"]) == ("open", False)
        assert members["worker-1"]["session"] is None
        assert stack.introspect()["clusters"]["workers"]["bindings"] == {
            "peer-1": "worker-3", "peer-2": "worker-2"}
        # While it is open nothing is routed there: worker-1 is free, yet a
        # new session is told the live instances are busy (no attempt, no
        # failure), and the bound sessions keep working.
        error = rpc_error(lambda: stack.echo("peer-3", tokens["peer-3"]))
        assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                   "all instances are busy")
        for _ in range(3):
            assert stack.echo("peer-1", tokens["peer-1"]).pod_name == "worker-3"
            assert stack.echo("peer-2", tokens["peer-2"]).pod_name == "worker-2"
        text = stack.metrics()
        assert metric(text, "omnirelay_peer_failures_total", rpc_peer="worker-1") == 1
        assert metric(text, successes, rpc_peer="worker-1") == 3
        assert metric(text, "omnirelay_gateway_attempts_total", cluster="workers",
                      outcome="transport_failure") == 1
        assert metric(text, successes, rpc_service="workers", rpc_peer="worker-3") == 4
    finally:
        stack.close()


def test_in_flight_cap_per_instance_and_waiting_with_a_deadline(native, tmp_path, pb, data_path):
    """maxInFlightPerInstance: 1 — a live Subscribe holds its instance's only
    slot. Another call of the session without a deadline is refused at once
    (coordinator rule 4); with a deadline it waits for the slot (rule 5) and
    goes through when the stream ends."""
    stack = Stack(native, tmp_path, pb, data_path=data_path,
                  workers_cluster={"maxInFlightPerInstance": 1})
    try:
        token = stack.login("cap-1")
        md = [("session-id", "cap-1"), ("authorization", token)]
        stream = _subscribe(stack, "cap-1", token)
        assert next(stream).pod_name == "worker-1"
        request = stack.pb.messages.EchoRequest(value="w")
        error = rpc_error(lambda: stack.client().MyServiceEcho(request, metadata=md))
        assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                   "all instances are busy")
        text = stack.metrics()
        assert metric(text, "omnirelay_peer_pool_exhausted_total", rpc_service="workers") >= 1
        assert metric(text, "omnirelay_peer_lease_rejected_total", rpc_peer="worker-1",
                      peer_rejection_reason="busy") >= 1
        waiting = stack.client().MyServiceEcho.future(request, metadata=md, timeout=CALL_TIMEOUT)
        wait_until(lambda: stack.introspect()["clusters"]["workers"]["waiting"] == 1, 10,
                   "the echo to wait for worker-1's slot")
        assert not waiting.done()
        stream.cancel()
        reply = waiting.result(timeout=CALL_TIMEOUT)
        assert (reply.pod_name, reply.client_value) == ("worker-1", "w")
        assert stack.introspect()["clusters"]["workers"]["bindings"] == {"cap-1": "worker-1"}
    finally:
        stack.close()
