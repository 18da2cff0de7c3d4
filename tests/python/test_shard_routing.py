"""Shard routing on the shard route's peer pool (docs/shards.md), with real
`omnirelay-native serve` processes: w1 and w2 in region west, e1 in east,
one SQLite coordination file, node w1 the declared global leader.

* streaming calls (server-stream, client-stream, duplex) carrying
  `rpc-shard-key` sent to any node are served by the shard's owner (the echo
  instance in EchoStream's replies; the owner's per-shard meter) in the
  namespace without geo (`hot`);
* a shard over its budget throttles on its owner: RESOURCE_EXHAUSTED with
  error code `shard-backpressure` and a `retry-after-ms` trailer;
* geo stickiness: w1's shard route has `geo` (latency threshold 100 ms); its
  link to w2 goes through the harness's fault proxy (300 ms injected). A key owned by w2 with its replica on e1 is served
  by w2 while west is healthy, by the replica e1 once latency on the w1->w2
  link makes w1's geo chooser leave west, and by w2 again after the heal and
  the hold."""

import time

import grpc
import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness import Cluster
from omnirelay.shards import ECHO_SERVICE, shards
from omnirelay.topology import TopologyBuilder
from mesh_support import wait_until as poll

try:
    find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover - depends on the checkout
    pytest.skip(f"shard routing tests need omnirelay-native: {error}", allow_module_level=True)

NAMES = ["w1", "w2", "e1"]
REGION = {"w1": "west", "w2": "west", "e1": "east"}
USERS = "users.v1.Users"
HOT = "hot.v1.Hot"
BUDGET = 20
HOLD_S = 3.0


def identity(b):
    return b


def topology():
    from omnirelay.harness.leadership import apply_leadership

    b = TopologyBuilder("shard-routing", "three mesh nodes in two regions routing by shard key")
    for name in NAMES:
        b.node(name, role="owner", region=REGION[name], zone=f"{REGION[name]}-a")
    b.with_link("w1", "w2", port="grpc", proxy=True)
    b.with_mesh_identity(profile="test")
    t = b.build()
    apply_leadership(t, {n: [("global", i)] for i, n in enumerate(NAMES)}, store="sqlite")
    for node in t.nodes:
        users = {"shards": 64, "replicas": 1, "service": USERS, "localService": ECHO_SERVICE}
        if node.name == "w1":
            users["geo"] = {"latencyThresholdMs": 100, "holdMs": int(HOLD_S * 1000), "evaluateEveryMs": 100,
                            "probeEvery": 5, "minSamples": 5}
        config = node.config.setdefault("omniRelay", {})
        config["echo"] = {"instance": "${self.name}"}
        config["shards"] = {"reconcileInterval": "250ms", "namespaces": {
            "users": users,
            # No replicas: a hot shard cannot be moved, so its owner's throttling is what
            # protects it (backpressure.shardThrottle: shard), never a rebalance in between.
            "hot": {"shards": 16, "replicas": 0, "budget": BUDGET, "service": HOT, "localService": ECHO_SERVICE},
        }}
        config["backpressure"] = {"shardMinHold": "1s", "sampleInterval": "250ms", "shardThrottle": "shard"}
    return t


def wait_until(predicate, timeout_s, interval_s=0.05):
    return poll(predicate, timeout_s, interval_s, ignore=(OSError, KeyError, ValueError, IndexError))


def ready(cluster):
    docs = [shards(cluster[n].admin) for n in NAMES]
    for ns in ("users", "hot"):
        entries = [next(e for e in d["namespaces"] if e["namespace"] == ns) for d in docs]
        first = entries[0]
        if first["version"] < 1 or sorted(x["id"] for x in first["nodes"]) != sorted(NAMES):
            return False
        if not all(e["version"] == first["version"] and all(x["routable"] for x in e["nodes"]) for e in entries):
            return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(topology(), tmp_path_factory.mktemp("shard-routing") / "three") as c:
        assert wait_until(lambda: ready(c), 40), [shards(c[n].admin) for n in NAMES]
        yield c


def shard_doc(cluster, node, ns):
    return next(e for e in shards(cluster[node].admin, ns)["namespaces"] if e["namespace"] == ns)


def key_placed(cluster, ns, owner, replica=None):
    """A key whose shard's owner (and first replica) are as asked, as w1 resolves it."""
    doc = shard_doc(cluster, "w1", ns)
    wanted = {s["id"] for s in doc["shards"]
              if s["owner"] == owner and (replica is None or s["replicas"][:1] == [replica])}
    assert wanted, f"no shard of {ns} owned by {owner} (replica {replica})"
    for i in range(20000):
        key = f"key-{i}"
        resolved = cluster["w1"].get_json(f"/omnirelay/control/shards/resolve?namespace={ns}&key={key}")
        if resolved["shard"] in wanted:
            return key, resolved["shard"]
    raise AssertionError("no key found")


def echo_request(payload: bytes, count: int) -> bytes:
    # omnirelay.echo.v1.EchoRequest{payload = 1 (bytes), count = 2 (int32)}
    return b"\x0a" + bytes([len(payload)]) + payload + b"\x10" + bytes([count])


def instance_of(reply: bytes) -> str:
    # omnirelay.echo.v1.EchoResponse: field 2 (instance, string)
    i = 0
    while i < len(reply):
        tag = reply[i]
        i += 1
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            while reply[i] & 0x80:
                i += 1
            i += 1
            continue
        length = reply[i]
        i += 1
        if field == 2:
            return reply[i:i + length].decode()
        i += length
    return ""


def served(cluster, node, ns, shard):
    return next(s for s in shard_doc(cluster, node, ns)["shards"] if s["id"] == shard)["served"]


def test_streaming_calls_are_served_by_the_shard_owner(cluster):
    # The `hot` namespace: no geo on any node, so every call goes to the owner.
    key, shard = key_placed(cluster, "hot", "e1")
    before = {n: served(cluster, n, "hot", shard) for n in NAMES}
    for via in ("w1", "w2"):
        with grpc.insecure_channel(cluster[via].address("grpc")) as channel:
            md = [("rpc-shard-key", key)]
            stream = channel.unary_stream(f"/{HOT}/EchoStream", request_serializer=identity,
                                          response_deserializer=identity)
            replies = list(stream(echo_request(b"p", 3), metadata=md, timeout=10))
            assert [instance_of(r) for r in replies] == ["e1"] * 3, replies
            collect = channel.stream_unary(f"/{HOT}/EchoCollect", request_serializer=identity,
                                           response_deserializer=identity)
            assert collect(iter([b"a", b"b", b"c"]), metadata=md, timeout=10) == b"abc"
            duplex = channel.stream_stream(f"/{HOT}/EchoDuplex", request_serializer=identity,
                                           response_deserializer=identity)
            assert list(duplex(iter([b"x", b"y"]), metadata=md, timeout=10)) == [b"x", b"y"]
    after = {n: served(cluster, n, "hot", shard) for n in NAMES}
    # Six streams, every one metered on the owner only.
    assert after["e1"] - before["e1"] == 6, (before, after)
    assert after["w1"] == before["w1"] and after["w2"] == before["w2"], (before, after)
    # No key: refused with its code, not served anywhere.
    with grpc.insecure_channel(cluster["w1"].address("grpc")) as channel:
        stream = channel.unary_stream(f"/{HOT}/EchoStream", request_serializer=identity,
                                      response_deserializer=identity)
        with pytest.raises(grpc.RpcError) as refused:
            list(stream(echo_request(b"p", 1), timeout=10))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(refused.value.trailing_metadata())["rpc-error-code"] == "missing-shard-key"


def test_a_shard_over_its_budget_is_throttled_by_its_owner(cluster):
    key, shard = key_placed(cluster, "hot", shard_doc(cluster, "w1", "hot")["shards"][0]["owner"])
    throttled = []
    ok = 0
    with grpc.insecure_channel(cluster["w1"].address("grpc")) as channel:
        call = channel.unary_unary(f"/{HOT}/Echo", request_serializer=identity, response_deserializer=identity)
        deadline = time.monotonic() + 20
        sent = 0
        while time.monotonic() < deadline and sent < 10000 and len(throttled) < 10:
            sent += 1
            try:
                call(b"x", metadata=[("rpc-shard-key", key)], timeout=5)
                ok += 1
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
                throttled.append(dict(error.trailing_metadata()))
    assert len(throttled) >= 10, f"{ok} served, {len(throttled)} throttled"
    for trailers in throttled:
        assert trailers["rpc-error-code"] == "shard-backpressure", trailers
        assert int(trailers["retry-after-ms"]) > 0, trailers
        assert trailers["rpc-backpressure"].startswith("node="), trailers
    owner_metrics = [cluster[n].metrics().value("omnirelay.shards.calls", default=0, outcome="throttled")
                     for n in NAMES]
    assert sum(owner_metrics) >= 10, owner_metrics


def test_geo_stickiness_uses_the_replica_in_the_fallback_region_and_returns(cluster):
    key, shard = key_placed(cluster, "users", "w2", "e1")
    w1 = cluster["w1"]

    def burst(n=20):
        served_by = []
        with grpc.insecure_channel(w1.address("grpc")) as channel:
            call = channel.unary_unary(f"/{USERS}/Echo", request_serializer=identity,
                                       response_deserializer=identity)
            for _ in range(n):
                _, rpc = call.with_call(b"g", metadata=[("rpc-shard-key", key)], timeout=10)
                md = dict(rpc.initial_metadata())
                served_by.append((md["rpc-shard-served-by"], md["rpc-shard-role"]))
        return served_by

    # Healthy (after any slow warm-up, e.g. while the previous test loaded the
    # machine, has left and the hold has passed): every call on the owner.
    start = time.monotonic()
    healthy = burst(30)
    while set(healthy) != {("w2", "owner")} and time.monotonic() - start < 30:
        healthy = burst(30)
    assert set(healthy) == {("w2", "owner")}, healthy

    cluster.chaos.latency(cluster.link("w1->w2"), 300, duration_s=60)
    start = time.monotonic()
    moved = None
    while time.monotonic() - start < 30:
        b = burst()
        if sum(1 for s in b if s == ("e1", "replica")) >= 14:
            moved = time.monotonic() - start
            break
    assert moved is not None, "keyed calls never moved to the east replica"
    metrics = w1.metrics()
    assert metrics.value("omnirelay.geo.mode", outbound="shards.users") == 1
    assert metrics.value("omnirelay.geo.routed", geo_region="east", outbound="shards.users") >= 14

    cluster.chaos.heal_link(cluster.link("w1->w2"))
    healed = time.monotonic()
    back = None
    while time.monotonic() - healed < 40:
        b = burst()
        if set(b) == {("w2", "owner")}:
            back = time.monotonic() - healed
            break
    assert back is not None, "keyed calls never returned to the west owner"
    assert back >= HOLD_S, back
    assert w1.metrics().value("omnirelay.geo.mode", outbound="shards.users") == 0
    print(f"shard geo: moved to the east replica after {moved:.2f}s, back to the west owner "
          f"{back:.2f}s after heal (hold {HOLD_S}s)")
