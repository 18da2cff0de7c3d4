"""Backpressure that propagates (docs/backpressure.md), with three real
`omnirelay-native serve` mesh members.

`hot` runs a ResourceLease queue and the echo service; `edge` routes echo
calls to the members with role `backend` (that is `hot`) and has a rate
limiter; `control` is a third member that only watches. Filling hot's queue
over its high watermark puts hot under backpressure: the state rides its
gossip metadata to edge and control, whose rate limiters switch to their
backpressure profile by themselves. Clients calling through edge are then
throttled (RESOURCE_EXHAUSTED + retry-after, fast) instead of timing out, and
the calls that reach hot stay within edge's backpressure budget. Draining the
queue below its low watermark clears everything."""

import json
import threading
import time
import urllib.request

import grpc
import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness import Cluster
from omnirelay.resourcelease import ResourceLeaseClient
from omnirelay.topology import TopologyBuilder

from mesh_support import identity, wait_until

try:
    find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover - depends on the checkout
    pytest.skip(f"backpressure mesh tests need omnirelay-native: {error}", allow_module_level=True)

ECHO = "/omnirelay.echo.v1.Echo/Echo"
HIGH, LOW = 4, 1
EDGE_RATE, EDGE_BURST = 5.0, 5.0  # edge's backpressure profile (tokens/s, burst)


def topology():
    b = TopologyBuilder("backpressure-mesh", "a saturated member throttles the edge")
    b.node("hot", role="backend", region="west").with_config({"omniRelay": {
        "echo": {"instance": "hot"},
        # Its own limiter (switched by its queue) must not be what refuses the
        # edges' admitted calls: the edges' budget is what is measured.
        "middleware": {"rateLimit": {"backpressure": {"maxConcurrency": 64}}},
        "principal": {"trustedProxies": ["127.0.0.1"]},
        "resourceLease": {"namespaces": {"jobs": {
            "highWatermark": HIGH, "lowWatermark": LOW, "retryAfter": "2s"}}},
    }})
    limits = {"rateLimit": {"maxConcurrency": 256, "backpressure": {
        "tokensPerSecond": EDGE_RATE, "burst": EDGE_BURST}}}
    b.node("edge", role="edge", region="east").with_config({"omniRelay": {
        "middleware": limits,
        "outbounds": {"backends": {"transport": "grpc", "mesh": {"role": "backend"}}},
        "routes": [{"prefix": "/omnirelay.echo.v1.Echo/", "outbound": "backends"}],
        "backpressure": {"retryAfter": "3s"},
    }})
    b.node("control", role="control", region="east").with_config({"omniRelay": {
        "middleware": limits}})
    return b.with_mesh_identity(profile="test").build()


class SseReader(threading.Thread):
    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.events = url, []

    def run(self):
        with urllib.request.urlopen(self.url, timeout=60) as response:
            event = None
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    self.events.append((event, json.loads(line[len("data: "):])))


def member_active(node, member):
    state = node.get_json("/omnirelay/control/backpressure")
    return state["members"].get(member, {}).get("active")


def metric(node, name):
    total = 0.0
    for line in node.metrics_text().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def burst(call, n, timeout_s=5):
    """n calls as fast as they go; returns (ok, [(code, trailers, seconds)])."""
    ok, refused = 0, []
    for _ in range(n):
        start = time.monotonic()
        try:
            call.with_call(b"x", timeout=timeout_s)
            ok += 1
        except grpc.RpcError as error:
            refused.append((error.code(), dict(error.trailing_metadata() or ()),
                            time.monotonic() - start))
    return ok, refused


def test_saturated_member_throttles_the_mesh_and_recovers(tmp_path):
    with Cluster(topology(), tmp_path / "bp", seed=7) as cluster:
        hot, edge, control = cluster["hot"], cluster["edge"], cluster["control"]
        channel = grpc.insecure_channel(edge.address("grpc"))
        call = channel.unary_unary(ECHO, request_serializer=identity,
                                   response_deserializer=identity)
        jobs = ResourceLeaseClient(hot.address("grpc"), "jobs", transport="grpc", principal="p")
        try:
            # Converged and calm: everyone sees everyone, nobody throttles.
            for node in (edge, control):
                assert wait_until(lambda n=node: member_active(n, "hot") is False, 30), \
                    node.get_json("/omnirelay/control/backpressure")
            assert wait_until(lambda: burst(call, 1)[0] == 1, 20)
            ok, refused = burst(call, 20)
            assert (ok, refused) == (20, []), refused
            _, answer = call.with_call(b"x", timeout=5)
            assert "rpc-backpressure" not in dict(answer.initial_metadata())
            sse = SseReader(f"http://{edge.admin}/omnirelay/control/backpressure/stream")
            sse.start()
            assert wait_until(lambda: any(e == "snapshot" for e, _ in sse.events), 10)

            # Saturate hot's queue over its high watermark.
            for i in range(HIGH):
                jobs.enqueue("job", f"j{i}", request_id=f"bp-{i}")
            state = hot.get_json("/omnirelay/control/backpressure")
            assert state["local"] is True and state["sources"]["resourcelease/jobs"]["active"]
            # The signal reaches the other members through gossip.
            for node in (edge, control):
                assert wait_until(lambda n=node: member_active(n, "hot") is True, 20), \
                    node.get_json("/omnirelay/control/backpressure")
                state = node.get_json("/omnirelay/control/backpressure")
                assert state["throttling"] is True and state["local"] is False
                assert state["rateLimit"]["mode"] == "backpressure"
            assert wait_until(lambda: any(
                e == "transition" and d.get("member") == "hot" and d["active"]
                for e, d in sse.events), 10), sse.events

            # Clients through edge are throttled, fast, with retry-after; the
            # calls that reach hot stay within edge's backpressure budget.
            # (Hot's own answers carry rpc-backpressure; an admitted call shows it.)
            served_before = hot.get_json("/omnirelay/echo/stats")["calls"]
            started = time.monotonic()
            ok, refused = burst(call, 60)
            elapsed = time.monotonic() - started
            assert refused, "edge must throttle while hot is under backpressure"
            for code, trailers, took in refused:
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, trailers)
                assert trailers.get("retry-after-ms") == "3000", trailers
                assert trailers.get("rpc-backpressure") == "upstream=edge", trailers
                assert took < 2.0, "throttling answers at once, never a timeout"
            budget = EDGE_BURST + EDGE_RATE * elapsed + 1
            assert ok <= budget, (ok, budget, elapsed)
            served = hot.get_json("/omnirelay/echo/stats")["calls"] - served_before
            assert served == ok and served <= budget, (served, ok, budget)
            assert metric(edge, "omnirelay_backpressure_throttled_total") >= len(refused)
            assert metric(edge, "omnirelay_backpressure_throttling") == 1
            hot_channel = grpc.insecure_channel(hot.address("grpc"))
            try:
                # The saturated queue's own refusal names the saturated node.
                with pytest.raises(grpc.RpcError) as pushed_back:
                    hot_channel.unary_unary("/resourcelease.jobs/enqueue")(
                        json.dumps({"item": {"resourceType": "job"}}).encode(), timeout=5,
                        metadata=[("rpc-encoding", "json"), ("x-client-principal", "p")])
                assert pushed_back.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refusal = dict(pushed_back.value.trailing_metadata())
                assert refusal["rpc-backpressure"] == "node=hot" and refusal["retry-after-ms"] == "2000"
                _, answer = hot_channel.unary_unary(
                    ECHO, request_serializer=identity, response_deserializer=identity
                ).with_call(b"x", timeout=5)
                assert dict(answer.initial_metadata())["rpc-backpressure"] == "node=hot"
            except grpc.RpcError as error:  # hot's own limiter may refuse: then it says so
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "retry-after-ms" in dict(error.trailing_metadata())
            finally:
                hot_channel.close()

            # The load stops: drain below the low watermark; everything clears.
            for _ in range(HIGH - LOW):
                jobs.complete(jobs.lease())
            assert hot.get_json("/omnirelay/control/backpressure")["local"] is False
            for node in (edge, control):
                assert wait_until(lambda n=node: member_active(n, "hot") is False, 20)
                state = node.get_json("/omnirelay/control/backpressure")
                assert state["throttling"] is False and state["rateLimit"]["mode"] == "normal"
            ok, refused = burst(call, 20)
            assert (ok, refused) == (20, []), refused
            assert metric(edge, "omnirelay_backpressure_transitions_total") == 2
            assert metric(edge, "omnirelay_backpressure_throttling") == 0
        finally:
            jobs.close()
            channel.close()
