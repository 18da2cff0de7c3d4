"""BackpressurePropagation_CrossRegion (seed 002, hyperscale suite).

A shard in the west region is saturated (its ResourceLease queue, namespace
``shard-42``, goes over its high watermark); the backpressure signal rides
gossip metadata to the global leader and the east edge nodes
(docs/backpressure.md). The edges' rate limiters switch to their
backpressure profile by themselves: clients through the edges are throttled
(RESOURCE_EXHAUSTED + ``retry-after-ms``, answered at once — no timeouts),
and the calls that reach the saturated shard stay within the edges'
backpressure budget (no thundering herd). When the load stops (the queue is
worked below its low watermark) every node returns to normal and calls
succeed again.

Artifacts: ``backpressure/before|during|after/<node>.json`` (every node's
``/omnirelay/control/backpressure``), ``throttling.json`` (counts, budget,
times). CI: 1 edge, 2 s of load; ``--scale full``: 3 edges, 8 s each.

Run: ``pytest scenarios/hyperscale -m hyperscale`` or
``omnirelay scenario run backpressure_propagation_cross_region [--scale full]``.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from omnirelay.resourcelease import ResourceLeaseClient
from omnirelay.scenario import Scenario
from omnirelay.topology import TopologyBuilder

pytestmark = [pytest.mark.hyperscale]

ECHO = "/omnirelay.echo.v1.Echo/Echo"
HIGH, LOW = 8, 2
RATE, BURST = 5.0, 5.0  # each edge's backpressure profile


def identity(b):
    return b


def topology(edges: int):
    b = TopologyBuilder("backpressure-cross-region", f"a west shard, a global leader, {edges} east edge(s)")
    limits = {"rateLimit": {"maxConcurrency": 512, "backpressure": {"tokensPerSecond": RATE, "burst": BURST}}}
    b.node("global-leader", role="global-leader", region="east", zone="east-a").with_config(
        {"omniRelay": {"middleware": limits}})
    b.node("west-shard-42", role="shard", region="west", zone="west-a").with_config({"omniRelay": {
        "echo": {"instance": "west-shard-42"},
        # Its own limiter (switched by its queue) must not be what refuses the
        # edges' admitted calls: the edges' budget is what is measured.
        "middleware": {"rateLimit": {"backpressure": {"maxConcurrency": 64}}},
        "principal": {"trustedProxies": ["127.0.0.1"]},
        "resourceLease": {"namespaces": {"shard-42": {
            "highWatermark": HIGH, "lowWatermark": LOW, "retryAfter": "2s"}}},
    }})
    for i in range(1, edges + 1):
        b.node(f"east-edge-{i}", role="edge", region="east", zone="east-b").with_config({"omniRelay": {
            "middleware": limits,
            "outbounds": {"shard": {"transport": "grpc", "mesh": {"role": "shard"}}},
            "routes": [{"prefix": "/omnirelay.echo.v1.Echo/", "outbound": "shard"}],
            "backpressure": {"retryAfter": "2s"},
        }})
    return b.with_mesh_identity(profile="test").build()


def states(cluster):
    return {name: node.get_json("/omnirelay/control/backpressure") for name, node in cluster.nodes.items()}


def save_states(s, cluster, label):
    seen = states(cluster)
    for name, state in seen.items():
        s.save_json(f"backpressure/{label}/{name}.json", state)
    return seen


def hammer(address, calls, results, for_s=0.0):
    """Echo calls as fast as they go through one edge: `calls` of them, or
    as many as fit in `for_s` seconds (at most `calls`) when it is set."""
    ok, refused, slowest = 0, [], 0.0
    until = time.monotonic() + for_s
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(ECHO, request_serializer=identity, response_deserializer=identity)
        for _ in range(calls):
            if for_s and time.monotonic() >= until:
                break
            start = time.monotonic()
            try:
                call.with_call(b"x", timeout=5)
                ok += 1
            except grpc.RpcError as error:
                refused.append((error.code(), dict(error.trailing_metadata() or ())))
            slowest = max(slowest, time.monotonic() - start)
    results[address] = (ok, refused, slowest)


def scenario(s: Scenario) -> None:
    edges = 3 if s.scale == "full" else 1
    calls = 20000  # per edge, a cap: the load runs for `load_s`
    load_s = s.duration(ci=2, full=8)
    topo = topology(edges)
    edge_names = [f"east-edge-{i}" for i in range(1, edges + 1)]
    report = {"scale": s.scale, "edges": edge_names, "loadSeconds": load_s}

    with s.given(f"{len(topo.nodes)} mesh nodes in two regions, calm"):
        cluster = s.cluster(topo)
        everyone = set(cluster.nodes)
        s.eventually(lambda: all(set(st["members"]) == everyone and not st["throttling"]
                                 for st in states(cluster).values()),
                     within_s=30, interval_s=0.2, message="the mesh never converged calm")
        save_states(s, cluster, "before")
        results = {}
        for name in edge_names:
            s.eventually(lambda n=name: hammer(cluster[n].address("grpc"), 1, results) or
                         results[cluster[n].address("grpc")][0] == 1, within_s=20, interval_s=0.2,
                         message=f"{name} never reached the shard")

    shard = cluster["west-shard-42"]
    queue = ResourceLeaseClient(shard.address("grpc"), "shard-42", transport="grpc", principal="load")
    try:
        with s.when(f"shard 42 in the west is saturated ({HIGH} items, high watermark {HIGH})"):
            for i in range(HIGH):
                queue.enqueue("job", f"j{i}", request_id=f"sat-{i}")
            saturated_at = time.monotonic()
            assert shard.get_json("/omnirelay/control/backpressure")["local"] is True

        with s.then("the signal reaches the global leader and every east edge"):
            watchers = ["global-leader", *edge_names]
            s.eventually(lambda: all(states(cluster)[n]["members"]["west-shard-42"]["active"] and
                                     states(cluster)[n]["rateLimit"]["mode"] == "backpressure"
                                     for n in watchers),
                         within_s=20, interval_s=0.05, message="the signal did not reach every node")
            report["signalSeconds"] = round(time.monotonic() - saturated_at, 3)
            save_states(s, cluster, "during")

        with s.then(f"{load_s:g}s of load: clients through the edges are throttled, not timed out, and the shard sees a bounded rate"):
            served_before = shard.get_json("/omnirelay/echo/stats")["calls"]
            results = {}
            started = time.monotonic()
            threads = [threading.Thread(target=hammer, args=(cluster[n].address("grpc"), calls, results, load_s))
                       for n in edge_names]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            elapsed = time.monotonic() - started
            served = shard.get_json("/omnirelay/echo/stats")["calls"] - served_before
            ok = sum(r[0] for r in results.values())
            refused = [x for r in results.values() for x in r[1]]
            budget = edges * (BURST + RATE * elapsed) + edges
            report.update({"elapsedSeconds": round(elapsed, 3), "admitted": ok, "refused": len(refused),
                           "servedByShard": served, "budget": round(budget, 1),
                           "slowestCallSeconds": round(max(r[2] for r in results.values()), 3)})
            assert len(results) == edges and refused, report
            assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and tr.get("retry-after-ms") == "2000"
                       and tr.get("rpc-backpressure", "").startswith("upstream=east-edge-")
                       for code, tr in refused), refused[:5]
            assert report["slowestCallSeconds"] < 2.0, report
            assert served == ok <= budget, report
            s.note(f"{ok} admitted, {len(refused)} throttled in {elapsed:.2f}s (budget {budget:.0f})")

        with s.when("the load stops: the shard works its queue below the low watermark"):
            for _ in range(HIGH - LOW):
                queue.complete(queue.lease())
            cleared_at = time.monotonic()

        with s.then("every node returns to normal and calls succeed"):
            s.eventually(lambda: all(not st["throttling"] and st["rateLimit"]["mode"] in ("normal", None)
                                     if st.get("rateLimit") else not st["throttling"]
                                     for st in states(cluster).values()),
                         within_s=20, interval_s=0.05, message="backpressure did not clear everywhere")
            report["clearSeconds"] = round(time.monotonic() - cleared_at, 3)
            save_states(s, cluster, "after")
            results = {}
            for name in edge_names:
                hammer(cluster[name].address("grpc"), 10, results)
            assert all(r[0] == 10 for r in results.values()), results
    finally:
        queue.close()
    s.save_json("throttling.json", report)
    s.note(f"signal in {report['signalSeconds']}s, cleared in {report['clearSeconds']}s")


def test_backpressure_propagation_cross_region(run_scenario):
    run_scenario(scenario)
