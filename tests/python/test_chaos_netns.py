"""Network namespaces and real packet loss (omnirelay.chaos.netns, docs/harness.md
"Network namespaces and packet loss"): real namespaces, veths, a bridge and
iptables' statistic match, measured with a real UDP echo process and the
namespaces' TCP counters; cleanup after the window, after the cluster stops,
and of a lab whose owner was killed with kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.chaos import FaultError, FaultSchedule, ScheduledFault
from omnirelay.chaos import netns
from omnirelay.harness import Cluster
from omnirelay.topology import Topology, TopologyBuilder, TopologyError

# CI runs as root (docs/harness.md); a non-root developer run cannot make namespaces.
if netns.available() is not None:  # pragma: no cover - depends on the machine
    pytest.skip(f"network namespaces: {netns.available()}", allow_module_level=True)

P = 0.3
# Round trip through a rule on both directions: 1 - (1 - p)^2 = 0.51; 400
# datagrams give a standard deviation of 0.025, so these bounds are ~4.5 sigma.
LOSS_BOUNDS = (0.40, 0.62)
WINDOW_S = 30.0


def namespaces_with(prefix):
    return [line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
            .stdout.splitlines() if line.startswith(prefix)]


def interfaces_with(prefix):
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [l.split(":")[1].strip().split("@")[0] for l in out.splitlines() if f" {prefix}" in l]


def assert_gone(prefix):
    # Namespace teardown releases the veths asynchronously: poll (bounded).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (namespaces_with(prefix) or interfaces_with(prefix)):
        time.sleep(0.1)
    assert namespaces_with(prefix) == [], namespaces_with(prefix)
    assert interfaces_with(prefix) == [], interfaces_with(prefix)
    assert not (netns.REGISTRY / f"{prefix}.json").exists()


def test_lab_drops_packets_with_the_rule_and_none_without():
    lab = netns.NetnsLab()
    try:
        address = lab.add("a")
        assert address.startswith("10.") and lab.gateway.startswith("10.")
        assert namespaces_with(lab.prefix) == [f"{lab.prefix}-a"]
        clean = netns.measure_udp_loss(lab, "a")
        assert clean["lossRatio"] <= 0.02, clean

        rule = lab.add_loss("a", P)
        assert len(lab.loss_rules_installed("a")) == 2  # INPUT and OUTPUT
        lossy = netns.measure_udp_loss(lab, "a")
        assert LOSS_BOUNDS[0] <= lossy["lossRatio"] <= LOSS_BOUNDS[1], lossy

        assert lab.remove_loss(rule)
        assert lab.loss_rules_installed("a") == []
        healed = netns.measure_udp_loss(lab, "a")
        assert healed["lossRatio"] <= 0.02, healed

        # One direction only: the echo's way back is dropped, p alone.
        lab.add_loss("a", P, direction="out")
        one_way = netns.measure_udp_loss(lab, "a")
        assert 0.19 <= one_way["lossRatio"] <= 0.41, one_way
        with pytest.raises(ValueError):
            lab.add_loss("a", 1.5)
        with pytest.raises(ValueError):
            lab.add_loss("a", 0.1, direction="sideways")
    finally:
        lab.destroy()
    assert_gone(lab.prefix)


def test_a_killed_owners_lab_is_swept_by_the_next_one():
    code = ("import sys, time\nfrom omnirelay.chaos import netns\nlab = netns.NetnsLab()\nlab.add('x')\n"
            "lab.add_loss('x', 0.5)\nprint(lab.prefix, flush=True)\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        prefix = child.stdout.readline().strip()
        assert prefix.startswith(netns.NAME_PREFIX), prefix
        assert namespaces_with(prefix) == [f"{prefix}-x"]
        # A second lab while the owner lives leaves it alone ...
        bystander = netns.NetnsLab()
        bystander.destroy()
        assert namespaces_with(prefix) == [f"{prefix}-x"]
    finally:
        child.send_signal(signal.SIGKILL)  # no atexit: its namespace stays behind
        child.wait(timeout=10)
    assert namespaces_with(prefix) == [f"{prefix}-x"]
    # ... and sweeps it once the owner is gone.
    lab = netns.NetnsLab()
    lab.destroy()
    assert_gone(prefix)


def test_topology_netns_option_is_validated():
    t = Topology.from_dict({"name": "n", "netns": "region", "nodes": [{"name": "a"}, {"name": "b", "netns": False}]})
    assert t.netns == "region" and t.node("b").netns is False
    assert Topology.from_dict({"name": "n", "netns": True, "nodes": [{"name": "a"}]}).netns == "node"
    assert Topology.from_yaml(t.to_yaml()).netns == "region"
    with pytest.raises(TopologyError, match="netns: unknown mode"):
        Topology.from_dict({"name": "n", "netns": "pod", "nodes": [{"name": "a"}]})


try:
    find_native_binary()
    NATIVE = None
except NativeBinaryNotFound as error:  # pragma: no cover - depends on the checkout
    NATIVE = str(error)


def two_nodes(mode="node"):
    b = TopologyBuilder("netns-pair", "two serve nodes, each in its own network namespace")
    for name in ("n1", "n2"):
        b.node(name, region="west" if name == "n1" else "east").with_port("grpc").with_config({"omniRelay": {
            "inbounds": {"grpc": {"address": "${self.grpc}"}},
            "echo": {"instance": name}}})
    b.node("root-side", region="east", netns=False)
    return b.with_netns(mode).build()


@pytest.mark.skipif(NATIVE is not None, reason=f"needs omnirelay-native: {NATIVE}")
def test_cluster_nodes_run_in_namespaces_and_loss_is_bounded_and_removed(tmp_path):
    with Cluster(two_nodes(), tmp_path / "netns", seed=3) as cluster:
        lab = cluster.netns
        prefix = lab.prefix
        n1, n2, root_side = cluster["n1"], cluster["n2"], cluster["root-side"]
        assert n1.host != n2.host and n1.host.startswith("10.")
        assert root_side.host == lab.gateway and root_side.netns is None
        # The node process itself (same pid as spawned) sits in its namespace.
        ns_inode = os.stat(f"/run/netns/{n1.netns}").st_ino
        assert os.stat(f"/proc/{n1.pid}/ns/net").st_ino == ns_inode
        assert os.readlink(f"/proc/{n1.pid}/exe").endswith("omnirelay-native")  # exec'd in place
        assert n1.healthy() and n2.healthy() and root_side.healthy()

        with pytest.raises(FaultError, match="root namespace"):
            cluster.chaos.packet_loss("root-side", 0.1, duration_s=1)
        with pytest.raises(FaultError, match="window"):
            cluster.chaos.packet_loss("n1", 0.1, duration_s=10_000)

        before = lab.tcp_counters("n1")
        rules = cluster.chaos.packet_loss("west", P, duration_s=WINDOW_S)
        started = time.monotonic()
        assert [r.namespace for r in rules] == [n1.netns]
        assert len(lab.loss_rules_installed("n1")) == 2 and lab.loss_rules_installed("n2") == []
        lossy = netns.measure_udp_loss(lab, "n1", count=300)
        # Real TCP traffic to the node retransmits through the loss (bounded: 8 s at most).
        after = before
        while after["RetransSegs"] == before["RetransSegs"] and time.monotonic() - started < 8:
            try:
                n1.get("/healthz", timeout=2)
            except OSError:  # a lost SYN twice in a row takes 3 s: that is the loss working
                pass
            after = lab.tcp_counters("n1")
        east = netns.measure_udp_loss(lab, "n2", count=200)
        assert time.monotonic() - started < WINDOW_S, "measurements must run inside the window"
        assert 0.38 <= lossy["lossRatio"] <= 0.64, lossy
        assert after["RetransSegs"] > before["RetransSegs"], (before, after)
        assert east["lossRatio"] <= 0.02, east  # only west was hit
        cluster.chaos.heal_loss(rules)
        assert lab.loss_rules_installed("n1") == []
        healed = netns.measure_udp_loss(lab, "n1", count=200)
        assert healed["lossRatio"] <= 0.02, healed

        # A short window ends by itself.
        cluster.chaos.packet_loss("n1", P, duration_s=1.5)
        assert len(lab.loss_rules_installed("n1")) == 2
        deadline = time.monotonic() + 15
        while lab.loss_rules_installed("n1") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lab.loss_rules_installed("n1") == [], "the rule outlived its window"
        assert lab.rules == []
        kinds = [e["event"] for e in cluster.events()]
        assert "chaos.packet_loss" in kinds and "chaos.packet_loss_removed" in kinds

        # Seeded schedules draw packet loss over regions too.
        schedule = FaultSchedule.generate(7, 5.0, regions=["east"], kinds=["packet-loss"], mean_interval_s=1.0)
        assert schedule.faults and all(0.02 <= f.params["probability"] <= 0.2 for f in schedule.faults)
        cluster.chaos.apply(ScheduledFault(0.0, "packet-loss", "east", 1.0, {"probability": 0.2}))
        assert len(lab.loss_rules_installed("n2")) == 2
        cluster.chaos.heal_loss()
        assert lab.loss_rules_installed("n2") == []

        # A rule still active at stop is removed with everything else.
        cluster.chaos.packet_loss("n2", 0.2, duration_s=60)
    assert_gone(prefix)


@pytest.mark.skipif(NATIVE is not None, reason=f"needs omnirelay-native: {NATIVE}")
def test_region_mode_shares_one_namespace_per_region(tmp_path):
    with Cluster(two_nodes("region"), tmp_path / "netns-region", seed=3) as cluster:
        lab = cluster.netns
        assert sorted(lab.namespaces) == ["east", "west"]
        assert cluster["n2"].netns == lab.namespace("east") and cluster["n1"].netns == lab.namespace("west")
        assert cluster["n1"].healthy() and cluster["n2"].healthy()
        prefix = lab.prefix
    assert_gone(prefix)


def test_packet_loss_needs_a_netns_topology(tmp_path):
    b = TopologyBuilder("plain")
    b.node("a", command=sys.executable, args=["-c", "import time; time.sleep(30)"]).with_ready(
        ready_file=False, http=None)
    with Cluster(b.build(), tmp_path / "plain") as cluster:
        with pytest.raises(FaultError, match="netns"):
            cluster.chaos.packet_loss("a", 0.1, duration_s=1)


HOLDER = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from test_chaos_netns import two_nodes
from omnirelay.harness import Cluster
cluster = Cluster(two_nodes(), sys.argv[1]).start()
print(json.dumps({"prefix": cluster.netns.prefix, "pids": [n.pid for n in cluster]}), flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(NATIVE is not None, reason=f"needs omnirelay-native: {NATIVE}")
def test_a_killed_harness_leaves_no_node_and_the_next_lab_sweeps_its_namespaces(tmp_path):
    from omnirelay.harness.process import pid_alive

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "art"), os.path.dirname(__file__)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        assert line, holder.stderr.read() if holder.poll() is not None else "holder printed nothing"
        started = json.loads(line)
    finally:
        holder.send_signal(signal.SIGKILL)  # no atexit, no handler: the kernel and the sweep must cope
        holder.wait(timeout=10)
    prefix, pids = started["prefix"], started["pids"]
    # The death signal survives `ip netns exec`: every node dies with the harness.
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), [p for p in pids if pid_alive(p)]
    assert len(namespaces_with(prefix)) == 2  # left behind ...
    netns.NetnsLab().destroy()                 # ... until the next lab starts
    assert_gone(prefix)


@pytest.mark.skipif(NATIVE is not None, reason=f"needs omnirelay-native: {NATIVE}")
def test_sigterm_of_the_harness_removes_nodes_and_namespaces(tmp_path):
    from omnirelay.harness.process import pid_alive

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "art"), os.path.dirname(__file__)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        assert line, holder.stderr.read() if holder.poll() is not None else "holder printed nothing"
        started = json.loads(line)
        holder.send_signal(signal.SIGTERM)  # the reaper's handler: nodes first, then the namespaces
        assert holder.wait(timeout=30) != 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
    assert not any(pid_alive(p) for p in started["pids"])
    assert_gone(started["prefix"])  # without waiting for a next lab's sweep
