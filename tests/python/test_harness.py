"""The cluster harness against real `omnirelay-native serve` processes:
readiness, endpoints, artifacts, node chaos (pause/resume, kill -9, graceful
stop, restart, restart policies), link chaos through fault proxies (latency,
partitions, region isolation), seeded schedules, and clear start-up errors."""

import json
import socket
import threading
import time

import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness import Cluster, NodeStartError, PortInUse, ReadinessTimeout, http_get
from omnirelay.harness.ports import ALLOCATOR
from omnirelay.harness.process import pid_alive, process_state
from omnirelay.topology import TopologyBuilder, three_node
from mesh_support import wait_until

try:
    BINARY = find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover - depends on the checkout
    pytest.skip(f"harness tests need omnirelay-native: {error}", allow_module_level=True)


@pytest.fixture
def three(tmp_path):
    with Cluster("three-node", tmp_path / "three", seed=11) as cluster:
        yield cluster



def through(link, path="/healthz", timeout=0.6):
    """GET on the link's target admin port through the link's proxy."""
    try:
        return http_get(link.url(path), timeout=timeout, context=link.ssl_context)[0]
    except OSError:
        return None


# -- start, endpoints, artifacts ----------------------------------------------------------------------------

def test_three_node_starts_ready_with_endpoints_and_artifacts(three, tmp_path):
    art = tmp_path / "three"
    for node in three:
        assert node.is_running() and node.ready(1.0)
        assert node.ready_info["pid"] == node.pid
        assert node.ready_info["admin"] == node.admin
        assert node.name in json.dumps(node.introspect())
        assert (art / "nodes" / node.name / "stderr.log").exists()
    assert {n.region for n in three} == {"east", "west"}
    endpoints = json.loads((art / "endpoints.json").read_text())
    assert set(endpoints["nodes"]) == {"node-1", "node-2", "node-3"}
    assert endpoints["links"]["node-1->node-3:admin"]["proxied"] is True
    assert through(three.link("node-1->node-3:admin")) == 200
    snaps = three.snapshot_metrics("probe")
    assert set(snaps) == {"node-1", "node-2", "node-3"}
    assert (art / "metrics" / "probe" / "node-1.prom").exists()
    assert (art / "metrics" / "probe" / "node-1.json").exists()
    events = [e["event"] for e in three.events()]
    assert events.count("node.ready") == 3 and "cluster.ready" in events


def test_stop_leaves_logs_final_metrics_and_no_process(tmp_path):
    cluster = Cluster("three-node", tmp_path / "c").start()
    pids = [n.pid for n in cluster]
    cluster.stop()
    assert not any(pid_alive(p) for p in pids)
    assert (tmp_path / "c" / "metrics" / "final" / "node-2.prom").exists()
    assert "node.stopped" in [e["event"] for e in cluster.events()]
    log = (tmp_path / "c" / "nodes" / "node-1" / "stderr.log").read_text()
    assert "node.ready" in log  # the node's own JSON-lines log was captured


# -- node chaos --------------------------------------------------------------------------------------------------

@pytest.mark.chaos
def test_paused_node_stops_answering_and_recovers(three):
    node = three["node-2"]
    assert node.healthy(1.0)
    three.chaos.pause("node-2", duration_s=1.5)
    assert process_state(node.pid) == "T"
    assert not node.healthy(0.5)  # connection accepted by the kernel, no answer
    assert three["node-1"].healthy(1.0)  # the others are unaffected
    assert wait_until(lambda: node.healthy(0.5), within_s=5), "node-2 did not recover after its window"
    assert not node.paused
    actions = [a["action"] for a in three.chaos.applied]
    assert actions[:2] == ["pause", "resume"]


@pytest.mark.chaos
def test_explicit_pause_resume(three):
    node = three["node-3"]
    node.pause()
    assert not node.healthy(0.4)
    node.resume()
    assert wait_until(lambda: node.healthy(0.5), within_s=3)


@pytest.mark.chaos
def test_graceful_stop_drains_and_restart_gets_a_new_process(three):
    node = three["node-1"]
    old = node.pid
    assert node.stop() == 0  # SIGTERM drains, exit 0
    assert not pid_alive(old) and not node.healthy(0.3)
    node.start()
    assert node.pid != old and node.healthy(1.0)
    three.chaos.restart("node-1")
    assert node.healthy(1.0) and node.incarnation == 3


@pytest.mark.chaos
def test_kill_with_restart_policy(tmp_path):
    b = three_node(proxy=False)
    topology = b.build()
    topology.node("node-1").with_restart("on-failure", max_restarts=2, backoff_s=0.1)
    with Cluster(topology, tmp_path / "k") as cluster:
        first = cluster["node-1"].pid
        cluster.chaos.kill("node-1")
        assert wait_until(lambda: cluster["node-1"].pid != first and cluster["node-1"].healthy(0.5), 15), \
            "on-failure policy did not restart node-1"
        # node-2 has policy "no": stays down after kill -9.
        cluster.chaos.kill("node-2")
        time.sleep(1.0)
        assert not cluster["node-2"].is_running()
        kinds = [e["event"] for e in cluster.events()]
        assert "node.restarting" in kinds and "node.exited" in kinds


@pytest.mark.chaos
def test_stop_during_restart_backoff_wins(tmp_path):
    # A crash schedules a restart after the backoff; a deliberate stop in that
    # window must keep the node down (no resurrection behind the caller's back).
    b = three_node(proxy=False)
    topology = b.build()
    topology.node("node-1").with_restart("always", max_restarts=5, backoff_s=1.0)
    with Cluster(topology, tmp_path / "b") as cluster:
        cluster.chaos.kill("node-1")
        assert wait_until(lambda: any(e["event"] == "node.killed" for e in cluster.events()), 5)
        time.sleep(0.4)  # the supervisor has noticed the exit and is backing off
        cluster["node-1"].stop()
        time.sleep(1.5)  # past the backoff
        assert not cluster["node-1"].is_running()
        assert "node.restarting" not in [e["event"] for e in cluster.events()]


@pytest.mark.chaos
def test_kill_with_bounded_outage(three):
    node = three["node-3"]
    old = node.pid
    three.chaos.kill("node-3", down_for_s=1.0)
    assert not node.healthy(0.3)
    assert wait_until(lambda: node.is_running() and node.healthy(0.5), within_s=10)
    assert node.pid != old


def test_spawns_from_short_lived_threads_survive(three):
    """PR_SET_PDEATHSIG fires when the forking *thread* exits; every spawn goes
    through one long-lived thread, so a restart from a timer thread survives it."""
    node = three["node-2"]
    worker = threading.Thread(target=node.restart)
    worker.start()
    worker.join(timeout=20)
    time.sleep(0.5)
    assert node.is_running() and node.healthy(1.0)


# -- link chaos -------------------------------------------------------------------------------------------------------

@pytest.mark.chaos
def test_latency_on_a_link_is_measurable(three):
    link = three.link("node-1->node-2:admin")

    def timed():
        start = time.monotonic()
        assert through(link, timeout=5) == 200
        return time.monotonic() - start

    baseline = min(timed() for _ in range(3))
    three.chaos.latency(link.name, latency_ms=200, duration_s=3)
    slowed = timed()
    assert slowed >= 0.38, (baseline, slowed)  # 200 ms each way
    assert baseline < 0.2


@pytest.mark.chaos
def test_partitioned_link_drops_traffic_and_heals_within_window(three):
    cut = three.link("node-1->node-3:admin")
    kept = three.link("node-1->node-2:admin")
    hit = three.chaos.isolate_region("west", duration_s=2.0)
    started = time.monotonic()
    assert set(hit) == {"node-1->node-3:admin", "node-2->node-3:admin", "node-3->node-1:admin",
                        "node-3->node-2:admin"}
    assert through(cut) is None  # dropped
    assert through(kept) == 200  # same region: untouched
    assert three["node-3"].healthy(1.0)  # the node itself is fine; only links are cut
    assert wait_until(lambda: through(cut) == 200, within_s=2.0 + 3.0), "partition did not heal"
    assert time.monotonic() - started >= 1.5


@pytest.mark.chaos
def test_partition_between_explicit_groups(three):
    three.chaos.partition(["node-1"], ["node-2"], duration_s=1.0)
    assert through(three.link("node-1->node-2:admin")) is None
    assert through(three.link("node-2->node-1:admin")) is None
    assert through(three.link("node-1->node-3:admin")) == 200


@pytest.mark.chaos
def test_heal_all_clears_everything(three):
    three.chaos.blackhole("node-2->node-1:admin", duration_s=60)
    three.chaos.pause("node-3", duration_s=60)
    three.chaos.heal_all()
    assert through(three.link("node-2->node-1:admin"), timeout=2) == 200
    assert three["node-3"].healthy(1.0)


@pytest.mark.chaos
@pytest.mark.slow
def test_same_seed_replays_the_same_fault_schedule(tmp_path):
    def run(seed, name):
        with Cluster("three-node", tmp_path / name, seed=seed) as cluster:
            schedule = cluster.chaos.schedule(2.5, kinds=["latency", "blackhole", "pause"], mean_interval_s=0.4,
                                              window_s=(0.2, 0.6))
            cluster.chaos.run_schedule(schedule, wait=True)
            applied = [(a["action"], a.get("node") or a.get("link"), a.get("kind"), a.get("duration_s"))
                       for a in cluster.chaos.applied if a["action"] in ("pause", "link_fault")]
            saved = json.loads((tmp_path / name / "chaos" / f"schedule-{seed}.json").read_text())
            return schedule, applied, saved

    s1, applied1, saved1 = run(5, "a")
    s2, applied2, _ = run(5, "b")
    s3, _, _ = run(6, "c")
    assert len(s1) >= 2
    assert s1.fingerprint() == s2.fingerprint() == saved1["fingerprint"]
    assert applied1 == applied2 and len(applied1) == len(s1)
    assert s3.fingerprint() != s1.fingerprint()


# -- start-up errors ---------------------------------------------------------------------------------------------------------

def test_readiness_timeout_gives_a_clear_error(tmp_path):
    b = TopologyBuilder("never-ready")
    b.node("stuck").with_ready(http="/not-a-ready-path", timeout_s=1.0)
    with pytest.raises(ReadinessTimeout) as info:
        Cluster(b.build(), tmp_path / "t").start()
    message = str(info.value)
    assert "node stuck" in message and "not ready after 1s" in message
    assert "GET /not-a-ready-path" in message
    pid = json.loads((tmp_path / "t" / "nodes" / "stuck" / "ready.json").read_text())["pid"]
    assert wait_until(lambda: not pid_alive(pid), 5), "timed-out node left running"


def test_node_exiting_early_reports_its_stderr(tmp_path):
    b = TopologyBuilder("bad-flag")
    b.node("bad").with_args(["serve", "--no-such-flag"])
    with pytest.raises(NodeStartError, match=r"(?s)node bad exited with code \d+ before it was ready.*no-such-flag"):
        Cluster(b.build(), tmp_path / "b").start()


def test_missing_binary_fails_fast(tmp_path, monkeypatch):
    with pytest.raises(NativeBinaryNotFound, match="/nonexistent/omnirelay-native"):
        Cluster("three-node", tmp_path / "m", binary="/nonexistent/omnirelay-native").start()
    monkeypatch.setenv("OMNIRELAY_NATIVE_BIN", "/nonexistent/bin")
    with pytest.raises(NativeBinaryNotFound, match="OMNIRELAY_NATIVE_BIN"):
        Cluster("three-node", tmp_path / "m2").start()


def test_taken_port_fails_fast(tmp_path):
    port = ALLOCATOR.allocate()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        cluster = Cluster("three-node", tmp_path / "p", port_overrides={"node-2.admin": port})
        with pytest.raises(PortInUse, match=f"node node-2 port admin: port 127.0.0.1:{port} is already in use"):
            cluster.start()
    assert all(n.pid is None for n in cluster)


def test_pinned_free_port_is_used(tmp_path):
    port = ALLOCATOR.allocate()
    ALLOCATOR.release(port)
    with Cluster("three-node", tmp_path / "q", port_overrides={"node-1.admin": port}) as cluster:
        assert cluster["node-1"].admin == f"127.0.0.1:{port}" and cluster["node-1"].healthy(1.0)
