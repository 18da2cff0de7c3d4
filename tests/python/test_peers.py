"""The peer kit driven from Python with a ManualClock: choosers, coordinator
rules, breaker re-admission by timer, health tracker, metrics and snapshots."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest

from omnirelay import ManualClock, MetricsRegistry, RequestMeta, StatusCode, errors
from omnirelay import peers
from omnirelay.peers import (
    BreakerState,
    CircuitBreaker,
    CircuitBreakerOptions,
    PeerDescriptor,
    PeerLeaseHealthTracker,
    PeerListCoordinator,
    PeerStatus,
)

FAST_BREAKER = CircuitBreakerOptions(
    consecutive_failures=3,
    base_open_delay=timedelta(milliseconds=100),
    max_open_delay=timedelta(milliseconds=800),
)


def make(chooser="fewest-pending", n=3, max_inflight=0, **kwargs):
    clock, metrics = ManualClock(), MetricsRegistry()
    coordinator = PeerListCoordinator(
        chooser, clock=clock, metrics=metrics, max_inflight=max_inflight, seed=11,
        breaker=FAST_BREAKER, service="svc", transport="grpc", **kwargs)
    for i in range(n):
        coordinator.add_peer(PeerDescriptor(id=f"p{i}", endpoint=f"grpc://p{i}:9090"))
    return clock, metrics, coordinator


def picks(coordinator, count, meta=None):
    counts = Counter()
    for _ in range(count):
        lease = coordinator.acquire(meta)
        counts[lease.peer_id] += 1
        lease.release(StatusCode.OK, timedelta(milliseconds=1))
    return counts


def wait_until(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.001)
    return predicate()


def test_chooser_table():
    assert peers.chooser_names() == [
        "fewest-pending", "hash", "least-latency", "preferred", "round-robin", "sticky",
        "two-random"]
    with pytest.raises(errors.InvalidArgument):
        PeerListCoordinator("no-such-chooser")
    names = {d["name"] for d in peers.metric_descriptors()}
    assert {"omnirelay.peer.pool_exhausted", "omnirelay.peer.lease_rejected",
            "omnirelay.peer.lease.duration"} <= names


@pytest.mark.parametrize("chooser", ["round-robin", "two-random", "fewest-pending"])
def test_even_distribution(chooser):
    _, _, coordinator = make(chooser, n=5)
    counts = picks(coordinator, 20000)
    assert set(counts) == {f"p{i}" for i in range(5)}
    for count in counts.values():
        assert abs(count - 4000) < 4000 * 0.06


def test_hash_is_sticky_and_stable_when_a_peer_joins():
    _, _, coordinator = make("hash", n=8)

    def owners():
        result = {}
        for k in range(4000):
            meta = RequestMeta()
            meta.shard_key = f"key-{k}"
            with coordinator.acquire(meta) as lease:
                result[meta.shard_key] = lease.peer_id
        return result

    before = owners()
    assert before == owners()
    coordinator.add_peer(PeerDescriptor(id="p8"))
    after = owners()
    moved = [k for k in before if before[k] != after[k]]
    assert all(after[k] == "p8" for k in moved)
    assert 0.5 / 9 < len(moved) / 4000 < 1.6 / 9

    meta = RequestMeta()
    meta.set_header("session-id", "user-1")
    assert len({coordinator.acquire(meta).peer_id for _ in range(20)}) == 1


def test_preferred_falls_back():
    clock, metrics = ManualClock(), MetricsRegistry()
    coordinator = PeerListCoordinator("preferred", clock=clock, metrics=metrics,
                                      preferred_protocol="h3")
    coordinator.add_peer(PeerDescriptor(id="h3", protocols=["h3"]))
    coordinator.add_peer(PeerDescriptor(id="h2", protocols=["h2"]))
    assert picks(coordinator, 10) == {"h3": 10}
    coordinator.set_peer_status("h3", PeerStatus.UNAVAILABLE)
    assert picks(coordinator, 10) == {"h2": 10}


def test_least_latency_avoids_slow_peer():
    _, _, coordinator = make("least-latency", n=3)
    latency = {"p0": 1, "p1": 1, "p2": 80}
    counts = Counter()
    for _ in range(2000):
        lease = coordinator.acquire()
        counts[lease.peer_id] += 1
        lease.release(StatusCode.OK, timedelta(milliseconds=latency[lease.peer_id]))
    assert counts["p2"] < 20
    slow = coordinator.find_peer("p2")
    assert slow.latency_ewma_ms > 50
    assert slow.latency_percentiles()["samples"] >= 1


def test_busy_without_deadline_is_resource_exhausted_never_deadline_exceeded():
    clock, metrics, coordinator = make(n=3, max_inflight=1)
    held = [coordinator.acquire() for _ in range(3)]
    for _ in range(5):
        clock.advance(timedelta(hours=1))
        with pytest.raises(errors.ResourceExhausted) as info:
            coordinator.acquire()
        assert info.value.error_code == "peer-pool-exhausted"
    assert metrics.total("omnirelay.peer.pool_exhausted") == 5
    assert metrics.total("omnirelay.peer.lease_rejected", {"peer.rejection_reason": "busy"}) == 15
    assert metrics.total("omnirelay.peer.acquire_deadline_exceeded") == 0
    for lease in held:
        lease.release()
    assert coordinator.acquire().active


def test_no_peers_is_unavailable():
    _, _, coordinator = make(n=0)
    with pytest.raises(errors.Unavailable):
        coordinator.acquire()


def test_past_deadline_fails_at_once():
    clock, metrics, coordinator = make(n=1)
    meta = RequestMeta()
    meta.deadline = clock.now() - 1
    with pytest.raises(errors.DeadlineExceeded):
        coordinator.acquire(meta)
    assert metrics.total("omnirelay.peer.pool_exhausted") == 0


def _acquire_in_thread(coordinator, meta):
    result = {}

    def run():
        try:
            result["lease"] = coordinator.acquire(meta)
        except errors.OmniRelayError as exc:  # noqa: PERF203
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(lambda: coordinator.waiting == 1)
    return thread, result


def test_deadline_waits_then_deadline_exceeded_without_pool_exhausted():
    clock, metrics, coordinator = make(n=2, max_inflight=1)
    held = [coordinator.acquire() for _ in range(2)]
    meta = RequestMeta()
    meta.time_to_live = timedelta(milliseconds=50)
    thread, result = _acquire_in_thread(coordinator, meta)
    clock.advance(timedelta(milliseconds=49))
    thread.join(0.05)
    assert thread.is_alive()
    clock.advance(timedelta(milliseconds=1))
    thread.join(5)
    assert isinstance(result.get("error"), errors.DeadlineExceeded)
    assert metrics.total("omnirelay.peer.pool_exhausted") == 0
    assert metrics.total("omnirelay.peer.acquire_deadline_exceeded") == 1
    del held


def test_waiting_request_served_when_a_peer_frees_up():
    clock, metrics, coordinator = make(n=2, max_inflight=1)
    held = [coordinator.acquire() for _ in range(2)]
    meta = RequestMeta()
    meta.time_to_live = timedelta(seconds=1)
    thread, result = _acquire_in_thread(coordinator, meta)
    freed = held[0].peer_id
    held[0].release(StatusCode.OK, timedelta(milliseconds=3))
    thread.join(5)
    assert result["lease"].peer_id == freed


def test_breaker_transitions_and_timer_readmission():
    clock, metrics, coordinator = make("round-robin", n=1)
    for _ in range(3):
        coordinator.acquire().release(StatusCode.UNAVAILABLE, timedelta(milliseconds=1))
    peer = coordinator.find_peer("p0")
    assert peer.breaker_state == BreakerState.OPEN
    state = coordinator.peer_states()[0]
    assert state["breaker"]["state"] == "open"
    assert state["failures"] == 3
    with pytest.raises(errors.ResourceExhausted):
        coordinator.acquire()
    assert metrics.total("omnirelay.peer.lease_rejected",
                         {"peer.rejection_reason": "circuit_open"}) == 1
    clock.advance(timedelta(milliseconds=100))  # no request touches it
    assert peer.breaker_state == BreakerState.HALF_OPEN
    lease = coordinator.acquire()
    assert lease.probe
    lease.release(StatusCode.OK, timedelta(milliseconds=1))
    assert peer.breaker_state == BreakerState.CLOSED
    assert metrics.total("omnirelay.peer.breaker.transitions",
                         {"peer.breaker.from": "open", "peer.breaker.to": "half_open"}) == 1


def test_client_errors_do_not_trip_a_standalone_breaker():
    clock = ManualClock()
    breaker = CircuitBreaker(clock, FAST_BREAKER)
    for _ in range(10):
        breaker.record_outcome(StatusCode.INVALID_ARGUMENT)
    assert breaker.state == BreakerState.CLOSED
    for _ in range(3):
        breaker.record_outcome(StatusCode.INTERNAL)
    assert breaker.try_admit() == "rejected"
    assert breaker.snapshot()["reopen_at"] == pytest.approx(clock.now() + 0.1)


def test_health_tracker_filters_and_diagnostics():
    clock, metrics = ManualClock(), MetricsRegistry()
    tracker = PeerLeaseHealthTracker(clock, heartbeat_grace=timedelta(seconds=2), metrics=metrics)
    coordinator = PeerListCoordinator("round-robin", clock=clock, metrics=metrics, tracker=tracker)
    for name in ("a", "b"):
        coordinator.add_peer(PeerDescriptor(id=name))
        tracker.record_heartbeat(name)
    clock.advance(timedelta(seconds=1))
    tracker.record_heartbeat("a")
    clock.advance(timedelta(seconds=1.5))  # b expired
    assert not tracker.is_peer_eligible("b")
    assert picks(coordinator, 10) == {"a": 10}
    tracker.record_lease_assigned("a")
    tracker.set_metadata("a", {"region": "eu"})
    tracker.record_disconnect("a", "connection reset")
    diagnostics = tracker.diagnostics()
    assert diagnostics["eligible"] == 0
    assert diagnostics["unhealthy"] == 2
    assert diagnostics["pendingReassignments"] == 1
    by_id = {p["peerId"]: p for p in diagnostics["peers"]}
    assert by_id["a"]["disconnectReason"] == "connection reset"
    assert by_id["a"]["metadata"] == {"region": "eu"}
    tracker.record_heartbeat("b")
    assert picks(coordinator, 4) == {"b": 4}
    assert metrics.total("omnirelay.peer.lease_disconnects") == 1


def test_peer_standalone_feedback_and_snapshot():
    clock = ManualClock()
    peer = peers.Peer(PeerDescriptor(id="x", protocols=["h3"]), clock, max_inflight=1)
    assert peer.descriptor.supports_http3
    result, probe = peer.try_acquire()
    assert result == peers.AcquireResult.ACQUIRED and not probe
    assert peer.try_acquire()[0] == peers.AcquireResult.BUSY
    peer.release(StatusCode.OK, timedelta(milliseconds=4))
    for ms in range(1, 101):
        peer.record_feedback(StatusCode.OK, timedelta(milliseconds=ms))
    p = peer.latency_percentiles()
    assert p["p50_ms"] == pytest.approx(50, abs=1)
    assert p["p99_ms"] == pytest.approx(99, abs=1)
    snap = peer.snapshot()
    assert snap["successes"] == 101
    assert snap["last_success"] == pytest.approx(clock.now())


def test_metrics_tags_and_lease_context_manager():
    clock, metrics, coordinator = make("round-robin", n=1)
    with coordinator.acquire() as lease:
        assert metrics.total("omnirelay.peer.inflight",
                             {"rpc.service": "svc", "rpc.transport": "grpc", "rpc.peer": "p0"}) == 1
    assert not lease.active
    assert metrics.total("omnirelay.peer.inflight") == 0
    assert metrics.total("omnirelay.peer.successes") == 1
    assert "omnirelay_peer_pool_exhausted_total" in metrics.render_prometheus()

    with pytest.raises(RuntimeError):
        with coordinator.acquire():
            raise RuntimeError("caller bug")
    state = coordinator.peer_states()[0]
    assert state["inflight"] == 0
    assert state["failures"] == 0  # the caller's exception is not the peer's failure


def test_sticky_chooser_binds_sessions_with_occupancy():
    # A new session takes the next peer (by id) after the last one handed out
    # that holds fewer than sticky_occupancy sessions; a bound one keeps its peer.
    _, _, coordinator = make("sticky", n=3, sticky_header="x-tenant", sticky_occupancy=2)

    def tenant(name):
        meta = RequestMeta()
        meta.set_header("x-tenant", name)
        return meta

    bound = {name: set(picks(coordinator, 5, tenant(name))) for name in "abcdef"}
    assert bound == {"a": {"p0"}, "b": {"p1"}, "c": {"p2"}, "d": {"p0"}, "e": {"p1"},
                     "f": {"p2"}}
    with pytest.raises(errors.ResourceExhausted):  # every peer holds two tenants
        coordinator.acquire(tenant("g"))
