"""The shard calls of omnirelay.mesh.v1.Control over gRPC (docs/shards.md
"Rebalance", "Budgets"): three real `serve` processes sharing one SQLite
coordination file. Rebalance and SetShardBudget need the admin token (as
Promote); bad input is refused with the reason; `omnirelay mesh rebalance
--grpc` moves a shard and prints the leader's decision; `omnirelay mesh
budget` sets a runtime budget that shows in /omnirelay/control/shards."""

import subprocess
import sys

import grpc
import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness import Cluster
from omnirelay.shards import rebalance_grpc, set_budget_grpc, sharded_topology, shards
from mesh_support import wait_until as poll

try:
    find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover - depends on the checkout
    pytest.skip(f"shard tests need omnirelay-native: {error}", allow_module_level=True)

NAMES = ["node-1", "node-2", "node-3"]


def wait_until(predicate, timeout_s, interval_s=0.05):
    return poll(predicate, timeout_s, interval_s, ignore=(OSError, KeyError, ValueError, IndexError))


def agreed(cluster):
    docs = [shards(cluster[n].admin)["namespaces"][0] for n in NAMES]
    return docs[0]["version"] >= 1 and len(docs[0]["nodes"]) == 3 and all(
        d["version"] == docs[0]["version"] for d in docs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    topology = sharded_topology(nodes=3, shard_count=64, replicas=2)
    with Cluster(topology, tmp_path_factory.mktemp("shard-control") / "three") as c:
        assert wait_until(lambda: agreed(c), 40), [shards(c[n].admin) for n in NAMES]
        yield c


def test_rebalance_over_grpc_needs_the_admin_token(cluster):
    with pytest.raises(grpc.RpcError) as refused:
        rebalance_grpc(cluster["node-2"].address("grpc"), "users", 3, token="not-the-token")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as refused:
        set_budget_grpc(cluster["node-2"].address("grpc"), "users", 5, token="not-the-token")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_input_is_refused_with_the_reason(cluster):
    address = cluster["node-3"].address("grpc")
    with pytest.raises(grpc.RpcError) as unknown:
        rebalance_grpc(address, "nope", 1)
    assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nope" in unknown.value.details() and "users" in unknown.value.details()
    with pytest.raises(grpc.RpcError) as out_of_range:
        rebalance_grpc(address, "users", 64)
    assert out_of_range.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "out of range (0..63)" in out_of_range.value.details()
    doc = shards(cluster["node-3"].admin)["namespaces"][0]
    owner = doc["shards"][5]["owner"]
    with pytest.raises(grpc.RpcError) as not_replica:
        rebalance_grpc(address, "users", 5, to="node-9")
    assert not_replica.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a replica" in not_replica.value.details()
    with pytest.raises(grpc.RpcError) as to_owner:
        rebalance_grpc(address, "users", 5, to=owner)
    assert to_owner.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for bad in (dict(namespace="nope", qps=5, shard=1), dict(namespace="users", qps=5, shard=64),
                dict(namespace="users", qps=-1, shard=1)):
        with pytest.raises(grpc.RpcError) as refused:
            set_budget_grpc(address, bad["namespace"], bad["qps"], bad["shard"])
        expected = grpc.StatusCode.FAILED_PRECONDITION if bad["namespace"] == "nope" else \
            grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.code() == expected, (bad, refused.value.details())


def test_cli_rebalance_over_grpc_moves_the_shard_and_prints_the_decision(cluster):
    doc = shards(cluster["node-1"].admin)["namespaces"][0]
    shard = 17
    owner, replicas = doc["shards"][shard]["owner"], doc["shards"][shard]["replicas"]
    moved = subprocess.run([sys.executable, "-m", "omnirelay", "mesh", "rebalance", "--grpc",
                            cluster["node-2"].address("grpc"), "--namespace", "users", "--shard", str(shard)],
                           capture_output=True, text=True, timeout=60)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    after = shards(cluster["node-2"].admin)["namespaces"][0]
    new_owner = after["shards"][shard]["owner"]
    assert new_owner in replicas and new_owner != owner
    assert f"shard {shard} of users: {owner} -> {new_owner}" in moved.stdout, moved.stdout
    # Every node reports its load, so the leader chose by pending calls.
    decision = after["lastRebalance"]
    assert decision["shard"] == shard and decision["to"] == new_owner and decision["reason"] == "manual"
    assert decision["chooser"] == "fewest-pending", decision
    assert {c["node"] for c in decision["candidates"]} == set(replicas)
    assert all(isinstance(c["pending"], int) for c in decision["candidates"]), decision
    assert "chooser fewest-pending" in moved.stdout and f"candidate {new_owner}" in moved.stdout, moved.stdout
    assert {load["node"] for load in after["loads"]} == set(NAMES)
    # The same call through the library answers with the candidates.
    back = rebalance_grpc(cluster["node-3"].address("grpc"), "users", shard, to=owner)
    assert back["from"] == new_owner and back["to"] == owner and back["version"] > back["previousVersion"]
    assert back["chooser"] == "named" and [c["node"] for c in back["candidates"] if c["chosen"]] == [owner]


def test_budget_verb_sets_a_runtime_budget_every_node_shows(cluster):
    done = subprocess.run([sys.executable, "-m", "omnirelay", "mesh", "budget", "--grpc",
                           cluster["node-1"].address("grpc"), "--namespace", "users", "--shard", "9", "--qps",
                           "12.5"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "budget of shard 9 of users: 12.5 QPS" in done.stdout, done.stdout
    over_http = subprocess.run([sys.executable, "-m", "omnirelay", "mesh", "budget", "--admin",
                                cluster["node-2"].admin, "--namespace", "users", "--qps", "300"],
                               capture_output=True, text=True, timeout=60)
    assert over_http.returncode == 0, over_http.stdout + over_http.stderr
    for name in NAMES:
        doc = shards(cluster[name].admin)["namespaces"][0]
        assert doc["budget"] == {"namespace": 300.0, "shards": {"9": 12.5}}, doc["budget"]
        assert doc["budgetQps"] == 300.0
        assert doc["shards"][9]["budgetQps"] == 12.5 and doc["shards"][8]["budgetQps"] == 300.0
    bad = subprocess.run([sys.executable, "-m", "omnirelay", "mesh", "budget", "--grpc",
                          cluster["node-1"].address("grpc"), "--namespace", "users", "--qps", "-3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr, bad.stderr
