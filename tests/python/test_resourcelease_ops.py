"""ResourceLease operations with real processes: the `omnirelay resourcelease` verbs
(drain -> restore round trip across two nodes loses nothing) and the zero-downtime
rollout script against the resourcelease-mesh topology (seeders and workers keep
running while the dispatcher is drained, restarted and restored)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from dataplane_support import NodeProcess
from omnirelay.resourcelease import ResourceLeaseClient

REPO = Path(__file__).resolve().parents[2]


def omnirelay_cmd(tmp_path: Path) -> Path:
    """A tiny `omnirelay` launcher for this interpreter (what the console script does)."""
    launcher = tmp_path / "omnirelay"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m omnirelay "$@"\n')
    launcher.chmod(0o755)
    return launcher


def cli(tmp_path, *args, check=True):
    result = subprocess.run([str(omnirelay_cmd(tmp_path)), "resourcelease", *args],
                            capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


@pytest.fixture
def two_nodes(tmp_path):
    started = []
    for name in ("old", "new"):
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps({"omniRelay": {
            "service": name,
            "inbounds": {"http": {"address": "127.0.0.1:0"}, "grpc": {"address": "127.0.0.1:0"}},
            "admin": {"address": "127.0.0.1:0"},
            # The CLI's --principal travels in x-client-principal: trusted from loopback only.
            "principal": {"trustedProxies": ["127.0.0.1"]},
            "resourceLease": {"namespaces": {"default": {}, "billing": {"maxAttempts": 1}}},
        }}))
        started.append(NodeProcess(["serve", "--config", str(config)], tmp_path, name))
    yield started
    for node in started:
        node.stop()


def test_cli_verbs_and_drain_restore_round_trip(tmp_path, two_nodes):
    old, new = two_nodes
    a = ["--address", old.http, "--namespace", "resourcelease.billing"]
    out = json.loads(cli(tmp_path, "enqueue", *a, "--resource-type", "invoice", "--resource-id", "inv-0",
                         "--body", "hello", "--request-id", "inv-0", "--attribute", "tenant=acme",
                         "--priority", "2").stdout)
    assert out["duplicate"] is False and out["state"] == "pending"
    assert json.loads(cli(tmp_path, "enqueue", *a, "--resource-type", "invoice", "--resource-id", "inv-0",
                          "--request-id", "inv-0").stdout)["duplicate"] is True

    # lease -> heartbeat -> complete, as a script would, with an owner identity.
    lease = json.loads(cli(tmp_path, "lease", *a, "--principal", "ops").stdout)
    assert lease["request_id"] == "inv-0" and lease["body"] == "hello" and lease["attributes"] == {"tenant": "acme"}
    ref = ["--item-id", str(lease["item_id"]), "--token", str(lease["fencing_token"])]
    cli(tmp_path, "heartbeat", *a, *ref, "--principal", "ops")
    wrong = cli(tmp_path, "complete", *a, *ref, "--principal", "intruder", check=False)
    assert wrong.returncode == 1 and wrong.stderr.startswith("PERMISSION_DENIED")
    cli(tmp_path, "complete", *a, *ref, "--principal", "ops")
    assert cli(tmp_path, "lease", *a, check=False).returncode == 3  # nothing left

    # fail --no-requeue -> dead-letter list -> requeue.
    client = ResourceLeaseClient(old.http, "billing", principal="ops")
    client.enqueue("invoice", "poison", request_id="poison")
    lease = json.loads(cli(tmp_path, "lease", *a, "--principal", "ops").stdout)
    ref = ["--item-id", str(lease["item_id"]), "--token", str(lease["fencing_token"])]
    state = json.loads(cli(tmp_path, "fail", *a, *ref, "--principal", "ops", "--error", "bad input",
                           "--no-requeue").stdout)
    assert state == {"state": "dead-letter"}
    dead = json.loads(cli(tmp_path, "dead-letter", "list", *a).stdout)
    assert [(d["item"]["requestId"], d["lastError"]) for d in dead] == [("poison", "bad input")]
    assert json.loads(cli(tmp_path, "dead-letter", "requeue", *a).stdout) == {"requeued": 1}

    # Drain the old node's queue to a file and restore it into the new node.
    expected = ["poison"] + [f"inv-{i}" for i in range(1, 25)]
    for rid in expected[1:]:
        client.enqueue("invoice", rid, rid.encode(), request_id=rid)
    drained = tmp_path / "drained.json"
    result = cli(tmp_path, "drain", *a, "--out", str(drained))
    assert "drained 25 item(s)" in result.stdout
    document = json.loads(drained.read_text())
    assert document["namespace"] == "billing" and len(document["items"]) == 25
    assert [r["item"]["requestId"] for r in document["items"]] == expected
    old_stats = old.get_json("/omnirelay/control/resourcelease")["namespaces"]["billing"]
    assert old_stats["pending"] == 0 and old_stats["drained"] is True

    result = cli(tmp_path, "restore", "--address", new.http, "--file", str(drained))
    assert "restored 25 item(s) into resourcelease.billing (0 already known)" in result.stdout
    again = cli(tmp_path, "restore", "--address", new.http, "--file", str(drained))
    assert "restored 0 item(s)" in again.stdout and "(25 already known)" in again.stdout

    table = cli(tmp_path, "stats", "--admin", new.admin).stdout.splitlines()
    assert table[0].split()[:4] == ["NAMESPACE", "PENDING", "ACTIVE", "DEAD"]
    assert table[1].split()[:5] == ["billing", "25", "0", "0", "normal"]
    watched = cli(tmp_path, "stats", "--admin", new.admin, "--watch", "--interval", "100ms", "--count", "2")
    assert watched.stdout.count("NAMESPACE") == 2

    worker = ResourceLeaseClient(new.http, "billing", principal="w")
    got = []
    while (lease_ := worker.lease()) is not None:
        got.append(lease_.request_id)
        assert lease_.body == (b"" if lease_.request_id == "poison" else lease_.request_id.encode())
        worker.complete(lease_)
    assert got == expected, "the round trip kept every item, in order"


def test_rollout_script_drains_restarts_restores_and_loses_nothing(tmp_path, monkeypatch):
    from omnirelay.harness.cluster import Cluster
    from omnirelay.harness.stack import ControlServer
    from omnirelay.topology import Topology

    monkeypatch.setenv("OMNIRELAY_STATE_DIR", str(tmp_path / "state"))
    topology = Topology.load("resourcelease-mesh")
    # Slower workers than seeders, so work is pending and leased when the rollout starts.
    for node in topology.nodes:
        if node.role == "worker":
            node.args[node.args.index("--work") + 1] = "0.15"
    seeded = {f"seeder-{s}-{n}" for s in (1, 2) for n in range(150)}
    cluster = Cluster(topology, tmp_path / "cluster")
    server = None
    cluster.start()
    try:
        server = ControlServer(cluster, state_file=tmp_path / "state" / "control.json").start()
        admin = cluster.node("dispatcher").admin

        def stats():
            with urllib.request.urlopen(f"http://{admin}/omnirelay/control/resourcelease", timeout=5) as r:
                return json.loads(r.read())["namespaces"]["default"]

        deadline = time.monotonic() + 60
        while stats()["enqueued"] < 80:  # mid-stream: seeding and working are under way
            assert time.monotonic() < deadline, "seeders never got going"
            time.sleep(0.1)

        env = dict(os.environ, OMNIRELAY=str(omnirelay_cmd(tmp_path)), PYTHON=sys.executable)
        result = subprocess.run(
            ["bash", str(REPO / "scripts/resourcelease-rollout.sh"), "--node", "dispatcher",
             "--control", str(tmp_path / "state" / "control.json"), "--out-dir", str(tmp_path / "backup"),
             "--timeout", "120"],
            capture_output=True, text=True, timeout=240, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "node dispatcher healthy, nothing lost" in result.stdout
        carried = int(result.stdout.split("nothing lost (")[1].split(" ")[0])
        assert carried > 0, "the rollout carried pending work across the restart"

        ledgers = [cluster.artifacts_dir / "nodes" / w / "completed.log" for w in ("worker-1", "worker-2", "worker-3")]

        def completed():
            counts = Counter()
            for ledger in ledgers:
                if ledger.exists():
                    counts.update(line for line in ledger.read_text().splitlines() if line)
            return counts

        deadline = time.monotonic() + 120
        while set(completed()) != seeded:
            assert time.monotonic() < deadline, f"missing {sorted(seeded - set(completed()))[:10]}"
            time.sleep(0.2)
        counts = completed()
        assert set(counts) == seeded
        assert [rid for rid, n in counts.items() if n > 1] == [], "an item was completed twice"
    finally:
        if server is not None:
            server.close()
        cluster.stop()

