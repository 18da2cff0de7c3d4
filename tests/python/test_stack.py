"""Stack control (omnirelay.harness.stack), the `omnirelay stack` verbs and the
my_service client, against the session stack's backends (registry, auth,
worker-1..3 as real processes; the gateway node is left out so these tests do
not depend on gateway mode). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnirelay.harness.stack import StackError, control, pinned_ports
from omnirelay.topology import Topology

pytest.importorskip("grpc")

REPO = Path(__file__).resolve().parents[2]
WORKERS = ["worker-1", "worker-2", "worker-3"]


def backends_topology() -> Topology:
    # Auto-restart is a topology option (the default is the reference's: stay
    # down); these tests exercise it, with subscriptions every 100 ms.
    from omnirelay.samples.session_stack import session_topology

    topology = session_topology(stream_interval="100ms", worker_restart="always")
    topology.nodes = [n for n in topology.nodes if n.role != "gateway"]
    topology.links = [l for l in topology.links if l.source != "gateway" and l.target != "gateway"]
    return topology


def test_topology_shape_and_pinned_port():
    topology = Topology.load("session-stack")
    assert pinned_ports(topology) == {"gateway.grpc": 10000}
    assert [n.name for n in topology.start_order()] == ["registry", "auth", *WORKERS, "gateway"]
    for name in WORKERS:
        node = topology.node(name)
        assert node.role == "worker" and node.labels["pod_name"] == name
        # The reference's behaviour by default: an exited worker stays down,
        # and subscriptions use the worker's default period (5 s).
        assert node.restart.policy == "no"
        assert "--stream-interval" not in node.launch_args()
    gateway = topology.node("gateway").config["omniRelay"]["gateway"]
    assert gateway["routes"][1]["balancer"] == "sticky"
    assert gateway["routes"][1]["transferStreams"] == ["/my_service.MyServiceAPI/MyServiceSubscribe"]
    assert gateway["jwt"]["secretFile"].endswith("/../auth/state/jwt-secret")


def test_stub_generation_and_tokens(tmp_path, monkeypatch):
    from omnirelay.samples import my_service

    monkeypatch.setenv("OMNIRELAY_CACHE_DIR", str(tmp_path))
    folder = my_service.generate_stubs()
    assert (folder / "my_service" / "my_service_pb2_grpc.py").is_file()
    assert my_service.generate_stubs() == folder  # cached by content
    pb = my_service.messages()
    assert pb.EchoResponse(pod_name="p").pod_name == "p"
    token = my_service.make_token("k" * 64, session_id="s", expires_in_s=-5)
    header, payload, signature = token.split(".")
    assert signature and json.loads(_unb64(payload))["session_id"] == "s"
    assert my_service.make_token("", session_id="s", alg="none").endswith(".")


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    from omnirelay.harness.cluster import Cluster

    cluster = Cluster(backends_topology(), tmp_path_factory.mktemp("stack") / "cluster")
    cluster.start()
    stack = control(cluster)
    stack.wait_workers(WORKERS)
    yield cluster
    cluster.stop()


def test_ps_and_selection(backends):
    stack = control(backends)
    rows = {r["name"]: r for r in stack.ps()}
    assert set(rows) == {"registry", "auth", *WORKERS}
    assert all(r["state"] == "running" and r["pid"] for r in rows.values())
    assert rows["worker-2"]["pod"] == "worker-2"
    assert [n.name for n in stack.select("role:worker")] == WORKERS
    assert [n.name for n in stack.select("pod:worker-3", "auth")] == ["auth", "worker-3"]
    with pytest.raises(StackError, match="no node matches 'nope'"):
        stack.select("nope")
    with pytest.raises(StackError, match="no node has pod_name"):
        stack.kill("nope")


def test_client_against_backends(backends):
    from omnirelay.samples.my_service import Client, error_of

    with Client(backends["auth"].address("grpc")) as auth:
        assert error_of(auth.login, "", "x", "s") == ("INVALID_ARGUMENT", "username is required")
        assert error_of(auth.login, "testuser", "bad", "s") == ("PERMISSION_DENIED", "invalid username or password")
        session = auth.session("client-test")
        assert session.login_reply.role == "user"
    with Client(backends["worker-1"].address("grpc")) as worker:
        reply = worker.echo("hi", session.token, "client-test")
        assert (reply.pod_name, reply.server_value, reply.index) == ("worker-1", "my_service", 0)
        assert error_of(worker.echo, "hi", session.token, "other") == \
            ("INTERNAL", "Session conflict: was=client-test, now=other")
        with worker.subscribe("tick", session.token, "client-test", timeout_s=10) as sub:
            assert [m.index for m in sub.take(3)] == [0, 1, 2]
        pid = backends["worker-1"].pid
        assert worker.shutdown(session.token, "client-test").server_method == "MyServiceShutdown"
    # The worker exits 0 after Shutdown; the `always` policy starts a fresh one.
    deadline = time.monotonic() + 15
    while not (backends["worker-1"].is_running() and backends["worker-1"].pid != pid):
        assert time.monotonic() < deadline, "worker-1 was not restarted"
        time.sleep(0.05)
    backends["worker-1"].wait_ready(10)


def test_stop_start_and_kill(backends):
    stack = control(backends)
    assert stack.stop("role:worker") == WORKERS
    assert {r["name"]: r["state"].split()[0] for r in stack.ps()}["worker-2"] == "stopped"
    stack.wait_workers([])  # a graceful stop unregisters at once
    assert stack.start("role:worker") == WORKERS
    stack.wait_workers(WORKERS)

    pid = backends["worker-2"].pid
    stack.kill("worker-2")  # a crash: the restart policy brings it back
    deadline = time.monotonic() + 15
    while not (backends["worker-2"].is_running() and backends["worker-2"].pid != pid):
        assert time.monotonic() < deadline, "worker-2 was not restarted after kill -9"
        time.sleep(0.05)

    stack.kill("worker-3", restart=False)
    time.sleep(backends["worker-3"].spec.restart.backoff_s + 0.5)
    assert not backends["worker-3"].is_running()
    assert {r["name"]: r["state"] for r in stack.ps()}["worker-3"].startswith("stopped")
    assert stack.start("worker-3") == ["worker-3"]
    assert backends["worker-3"].is_running()


def test_reset_wipes_state(backends):
    from omnirelay.samples.my_service import Client

    stack = control(backends)
    state = Path(backends["auth"].dir) / "state"
    secret_before = (state / "jwt-secret").read_text()
    with Client(backends["worker-2"].address("grpc")) as worker:
        worker.echo("bind", None, "before-reset")
    stack.reset()
    assert all(r["state"] == "running" and r["restarts"] == 0 for r in stack.ps())
    assert (state / "jwt-secret").read_text() != secret_before
    assert oct((state / "users.db").stat().st_mode & 0o777) == "0o600"
    with Client(backends["worker-2"].address("grpc")) as worker:  # the binding is gone
        assert worker.echo("bind", None, "after-reset").client_session_id == "after-reset"
    with Client(backends["auth"].address("grpc")) as auth:  # the store was re-seeded
        assert auth.login("testuser", "testpass", "s").token
    assert stack.registered() == WORKERS


def _omnirelay(*args, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "omnirelay", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(REPO))


def test_up_serves_control_and_stack_verbs(tmp_path):
    topology_file = tmp_path / "backends.yaml"
    topology_file.write_text(backends_topology().to_yaml().replace("name: session-stack", "name: backends"))
    # The child imports omnirelay the way this test did (installed package, or
    # PYTHONPATH=python in a source tree): prepending the source tree here would
    # shadow an installed package whose native module lives only in site-packages.
    env = dict(os.environ, OMNIRELAY_STATE_DIR=str(tmp_path / "state"))
    up = subprocess.Popen([sys.executable, "-m", "omnirelay", "up", str(topology_file), "--artifacts",
                           str(tmp_path / "run"), "--duration", "120"], cwd=str(REPO), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state_file = tmp_path / "state" / "stack-backends.json"
    try:
        deadline = time.monotonic() + 60
        while not state_file.exists():
            assert up.poll() is None, up.stdout.read()
            assert time.monotonic() < deadline, "omnirelay up did not write its control file"
            time.sleep(0.1)
        assert oct(state_file.stat().st_mode & 0o777) == "0o600"
        assert (tmp_path / "run" / "control.json").exists()

        ps = _omnirelay("stack", "ps", "--json", env=env)
        assert ps.returncode == 0, ps.stderr
        assert {n["name"] for n in json.loads(ps.stdout)["nodes"]} == {"registry", "auth", *WORKERS}

        killed = _omnirelay("stack", "kill", "worker-1", "--no-restart", env=env)
        assert killed.returncode == 0, killed.stderr
        assert "worker-1" in killed.stdout and "stopped" in killed.stdout
        started = _omnirelay("stack", "start", "role:worker", env=env)
        assert started.returncode == 0 and "start: worker-1" in started.stdout, started.stdout + started.stderr

        restarted = _omnirelay("stack", "restart", "auth", env=env)
        assert restarted.returncode == 0, restarted.stderr
        reset = _omnirelay("stack", "--topology", "backends", "reset", env=env)
        assert reset.returncode == 0 and "reset:" in reset.stdout, reset.stdout + reset.stderr

        unknown = _omnirelay("stack", "stop", "nope", env=env)
        assert unknown.returncode == 1 and "no node matches 'nope'" in unknown.stderr

        record = json.loads(state_file.read_text())
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(record["url"] + "/ps", timeout=5)
        assert denied.value.code == 401
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    assert not state_file.exists(), "the control file outlived `omnirelay up`"
    none = _omnirelay("stack", "ps", env=env)
    assert none.returncode == 1 and "no running stack" in none.stderr
