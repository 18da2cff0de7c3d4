"""Geo-aware routing (docs/peers.md "geo") with real `omnirelay-native serve`
processes.

A client node in region west has an outbound with `geo:` over the mesh
members of role backend: two in west, two in east, each running the echo
service (the serving instance rides back in `x-omnirelay-instance`). The
client reaches the west backends' HTTP inbounds through the harness's fault
proxy (each west backend advertises the proxied address as its HTTP data
endpoint; gossip runs on gRPC, untouched). Latency injected on those links
moves calls to east within a bounded time; after the heal they come back,
but not before the hold period."""

import time

import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness import Cluster
from omnirelay.topology import TopologyBuilder

from mesh_support import Caller

try:
    find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover - depends on the checkout
    pytest.skip(f"geo routing tests need omnirelay-native: {error}", allow_module_level=True)

WEST = ["w1", "w2"]
EAST = ["e1", "e2"]
HOLD_S = 3.0
METHOD = "/httpecho.Svc/Echo"


def topology():
    b = TopologyBuilder("geo-routing", "a west client with a geo outbound over two regions")
    for name in WEST + EAST:
        region = "west" if name in WEST else "east"
        mesh = {}
        if region == "west":
            mesh = {"mesh": {"advertiseEndpoints": {"http": f"${{links.client->{name}:http}}"}}}
        b.node(name, role="backend", region=region).with_port("http").with_config({"omniRelay": {
            "inbounds": {"http": {"address": "${self.http}"}},
            "echo": {"instance": name, "procedures": ["httpecho.Svc/Echo"]},
            **mesh}})
    for name in WEST:
        b.with_link("client", name, port="http", proxy=True)
    b.node("client", role="client", region="west").with_config({"omniRelay": {
        "outbounds": {"backends": {
            "transport": "http",
            "mesh": {"role": "backend"},
            "geo": {"latencyThresholdMs": 60, "holdMs": int(HOLD_S * 1000),
                    "evaluateEveryMs": 100, "probeEvery": 5, "minSamples": 5,
                    "innerChooser": "round-robin"},
        }},
        "routes": [{"prefix": "/httpecho.Svc/", "outbound": "backends"}],
    }})
    return b.with_mesh_identity(profile="test").build()


def east_share(served):
    return sum(1 for s in served if s in EAST) / max(1, len(served))


def poll(caller, predicate, within_s):
    """Bursts until predicate(burst) holds; returns (seconds taken, last burst) or None."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        served = caller.burst(20)
        if predicate(served):
            return time.monotonic() - start, served
    return None


def peer_ids(node):
    outbound = node.get_json("/omnirelay/introspect")["outbounds"]["backends"]
    return sorted(p["id"] for p in outbound["peers"])


def test_geo_outbound_falls_back_on_latency_and_returns_after_hold(tmp_path):
    with Cluster(topology(), tmp_path / "geo", seed=5) as cluster:
        client = cluster["client"]
        caller = Caller(client.address("grpc"), METHOD)
        try:
            deadline = time.monotonic() + 30
            while peer_ids(client) != sorted(WEST + EAST) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert peer_ids(client) == sorted(WEST + EAST)

            # Healthy: every call stays in the client's region.
            healthy = caller.burst(40)
            assert set(healthy) == set(WEST), healthy
            metrics = client.metrics()
            assert metrics.value("omnirelay.geo.mode", outbound="backends") == 0
            assert metrics.value("omnirelay.geo.routed", geo_region="west") >= 40
            assert metrics.value("omnirelay.geo.routed", default=0, geo_region="east") == 0

            # Degrade west: 150 ms on both west links (threshold 60 ms).
            for name in WEST:
                cluster.chaos.latency(cluster.link(f"client->{name}:http"), 150, duration_s=60)
            moved = poll(caller, lambda s: east_share(s) >= 0.7, within_s=20)
            assert moved is not None, "calls never moved to east"
            moved_after_s, _ = moved
            degraded = caller.burst(40)
            # Probes (1 in 5) keep measuring west; the rest go east.
            assert east_share(degraded) >= 0.7, degraded
            metrics = client.metrics()
            assert metrics.value("omnirelay.geo.mode", outbound="backends") == 1
            assert metrics.value("omnirelay.geo.transitions", geo_mode="fallback") == 1
            assert metrics.value("omnirelay.geo.routed", geo_region="east") >= 28

            # Heal: calls return to west, but only after the hold period.
            for name in WEST:
                cluster.chaos.heal_link(cluster.link(f"client->{name}:http"))
            healed_at = time.monotonic()
            back = poll(caller, lambda s: set(s) <= set(WEST), within_s=30)
            assert back is not None, "calls never came back to west"
            returned_after_s = time.monotonic() - healed_at
            assert returned_after_s >= HOLD_S, returned_after_s
            metrics = client.metrics()
            assert metrics.value("omnirelay.geo.mode", outbound="backends") == 0
            assert metrics.value("omnirelay.geo.transitions", geo_mode="local") == 1
            assert caller.failures == [], caller.failures
            cluster.event("geo.figures", moved_after_s=moved_after_s,
                          returned_after_s=returned_after_s)
            print(f"geo: moved to east after {moved_after_s:.2f}s, "
                  f"back to west {returned_after_s:.2f}s after heal (hold {HOLD_S}s)")
        finally:
            caller.close()
