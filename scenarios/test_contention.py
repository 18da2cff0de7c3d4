"""The PeerListCoordinator contention scenario (seed 000).

A gateway forwards ``trace.Analytics/Process`` to three echo backends whose
concurrency is capped (8 in flight, 100 ms service time); the gateway leases
at most 8 calls per backend and picks with ``fewest-pending``. Nothing in the
configuration sets a TTL or deadline. ``omnirelay benchmark`` drives the
seed's two load phases (400 concurrency / 200 rps, then 800 / 400) while one
backend gets a latency spike and another is drained, then checks the seed's
success criteria:

1. TTL-less load fails only as RESOURCE_EXHAUSTED, each after every available
   peer refused (``lease_rejected{busy}`` grows on all three peers and every
   failure is a counted ``pool_exhausted``); zero DEADLINE_EXCEEDED in the
   benchmark results and in the gateway's metrics.
2. Once back-pressure is gone, leasing resumes with no restart.
3. With ``--ttl 50ms`` DEADLINE_EXCEEDED appears and ``pool_exhausted`` does not
   grow from those expirations; a deadline already past fails at once.

Run it with ``pytest scenarios/test_contention.py`` or
``omnirelay scenario run contention`` (``--scale full`` for the seed's
10-minute phases). Artifacts: metric snapshots per phase, the benchmark
reports, and ``report.json`` with the figures.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from omnirelay.benchmark import run_benchmark
from omnirelay.scenario import Scenario, counter_delta

PROCEDURE = "trace.Analytics/Process"
BACKENDS = ("backend-1", "backend-2", "backend-3")


# The load generator's client certificate when the cluster runs under mTLS.
tls_options: dict = {}


def _load(s: Scenario, gateway: str, label: str, **options):
    """One benchmark run against the gateway, saved into the artifacts."""
    options = {**tls_options, **options}
    result = run_benchmark(
        address=[gateway], transport="grpc", service="trace.Analytics", procedure=PROCEDURE,
        encoding="application/json", body='{"payload":"load"}', quiet=True,
        save_to=s.artifacts_dir / f"benchmark-{label}.json", **options)
    s.note(f"{label}: {result.requests} requests, {result.throughput_rps:.0f}/s, "
           f"status {dict(sorted(result.status_counts.items()))}")
    return result


def _gateway_delta(before, after, name, **labels) -> float:
    return counter_delta(before, after, name, node="gateway", **labels)


def scenario(s: Scenario) -> None:
    report: dict = {"scale": s.scale}
    phase_s = s.duration(ci=4, full=600)
    warmup = "0s" if s.scale != "full" else "30s"

    with s.given("a gateway in front of three concurrency-capped echo backends, no TTLs"):
        cluster = s.cluster("contention")
        gateway = cluster["gateway"]
        address = gateway.address("grpc")
        tls_options.clear()
        if cluster.pki is not None:  # the run is under mTLS (OMNIRELAY_TLS=mtls)
            address = "https://" + address
            tls_options.update(cluster.pki.benchmark_options())
        gateway_pid = gateway.pid
        outbound = gateway.introspect()["outbounds"]["analytics"]
        s.note(f"gateway {address}, outbound {outbound.get('chooser', outbound)}")

    with s.when(f"phase 1: 400 concurrent / 200 rps for {phase_s:g}s while backend-2 slows down"):
        before1 = s.snapshot("phase1-before")
        # Fault windows are bounded at 600 s by the chaos API: the spike covers
        # the whole phase at CI scale and its first ten minutes at full scale.
        cluster.chaos.latency("gateway->backend-2", latency_ms=300,
                              duration_s=min(phase_s + 1, 600), direction="down")
        phase1 = _load(s, address, "phase1", concurrency=400, rps=200,
                       duration=f"{phase_s:g}s", warmup=warmup)
        after1 = s.snapshot("phase1-after")

    with s.then("it fails only as RESOURCE_EXHAUSTED, each after every peer refused; no DeadlineExceeded"):
        assert phase1.count("DEADLINE_EXCEEDED") == 0, phase1.status_counts
        assert set(phase1.status_counts) <= {"OK", "RESOURCE_EXHAUSTED"}, phase1.status_counts
        exhausted = phase1.count("RESOURCE_EXHAUSTED")
        assert exhausted > 0, f"phase 1 produced no contention: {phase1.status_counts}"
        assert phase1.successes > 0
        pool = _gateway_delta(before1, after1, "omnirelay.peer.pool_exhausted")
        # Warm-up requests are not in the benchmark's counts, so >= with warm-up.
        assert pool == exhausted if warmup == "0s" else pool >= exhausted, (pool, exhausted)
        busy_by_peer = {
            sample.labels["rpc_peer"]: None
            for sample in after1["gateway"].series("omnirelay.peer.lease_rejected",
                                                    peer_rejection_reason="busy")
        }
        for peer in busy_by_peer:
            busy_by_peer[peer] = _gateway_delta(before1, after1, "omnirelay.peer.lease_rejected",
                                                peer_rejection_reason="busy", rpc_peer=peer)
        assert len(busy_by_peer) == 3 and all(v >= 1 for v in busy_by_peer.values()), busy_by_peer
        assert _gateway_delta(before1, after1, "omnirelay.peer.acquire_deadline_exceeded") == 0
        report["phase1"] = {"benchmark": phase1.raw, "pool_exhausted": pool,
                            "lease_rejected_busy": busy_by_peer}

    with s.when(f"phase 2: 800 concurrent / 400 rps for {phase_s:g}s while backend-3 is drained"):
        before2 = s.snapshot("phase2-before")
        drain = threading.Timer(phase_s / 3, cluster.chaos.stop, args=("backend-3",),
                                kwargs={"down_for_s": phase_s / 3})
        drain.start()
        try:
            phase2 = _load(s, address, "phase2", concurrency=800, rps=400, duration=f"{phase_s:g}s")
        finally:
            drain.join()
        after2 = s.snapshot("phase2-after")

    with s.then("sustained back-pressure still never turns into DeadlineExceeded"):
        assert phase2.count("DEADLINE_EXCEEDED") == 0, phase2.status_counts
        # A drained backend answers UNAVAILABLE until its breaker opens: the only
        # other failure allowed, and only because a peer left mid-phase.
        assert set(phase2.status_counts) <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, \
            phase2.status_counts
        assert phase2.count("RESOURCE_EXHAUSTED") > 0
        assert _gateway_delta(before2, after2, "omnirelay.peer.acquire_deadline_exceeded") == 0
        report["phase2"] = {"benchmark": phase2.raw,
                            "pool_exhausted": _gateway_delta(before2, after2,
                                                             "omnirelay.peer.pool_exhausted")}

    with s.when("back-pressure is removed and light load runs"):
        s.eventually(lambda: cluster["backend-3"].ready(), within_s=30)
        cluster.chaos.heal_all()
        recovery = _load(s, address, "recovery", concurrency=8, rps=40, duration="2s")

    with s.then("leasing resumed without restarting the gateway"):
        assert recovery.failures == 0, recovery.status_counts
        assert recovery.successes >= 70
        assert gateway.pid == gateway_pid
        report["recovery"] = {"benchmark": recovery.raw}

    with s.when("the load runs again with --ttl 50ms, and once with a deadline already past"):
        before3 = s.snapshot("ttl-before")
        ttl = _load(s, address, "ttl-50ms", concurrency=400, rps=300, duration="2s", ttl="50ms")
        past = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat(timespec="seconds")
        expired = _load(s, address, "deadline-past", concurrency=16, requests=200, deadline=past)
        after3 = s.snapshot("ttl-after")

    with s.then("DeadlineExceeded appears and pool_exhausted does not grow from it"):
        assert ttl.count("DEADLINE_EXCEEDED") > 0, ttl.status_counts
        assert _gateway_delta(before3, after3, "omnirelay.peer.pool_exhausted") == 0
        assert expired.count("DEADLINE_EXCEEDED") == expired.requests == 200, expired.status_counts
        assert expired.failure.max < 50, f"expired deadline took {expired.failure.max} ms"
        report["ttl"] = {"benchmark": ttl.raw,
                         "acquire_deadline_exceeded": _gateway_delta(
                             before3, after3, "omnirelay.peer.acquire_deadline_exceeded")}
        report["deadline_past"] = {"benchmark": expired.raw}
        s.save_json("report.json", report)


def test_contention(run_scenario):
    run_scenario(scenario)
