"""The peer kit from Python: descriptors, peers, circuit breakers, the lease
health tracker, choosers and the PeerListCoordinator.

Everything here is the C++ implementation (``omnirelay._core``); this module
only names it and adds typing. Times are float epoch seconds, durations a
``datetime.timedelta`` or float seconds.

Typical use with a manual clock::

    from omnirelay import ManualClock, MetricsRegistry, RequestMeta
    from omnirelay.peers import PeerListCoordinator, PeerDescriptor

    clock, metrics = ManualClock(), MetricsRegistry()
    coordinator = PeerListCoordinator("fewest-pending", clock=clock, metrics=metrics,
                                      max_inflight=1, seed=7)
    coordinator.add_peer(PeerDescriptor(id="a", endpoint="grpc://a:9090"))
    with coordinator.acquire() as lease:
        ...                               # released OK on exit
    metrics.total("omnirelay.peer.successes")

``acquire`` raises :class:`omnirelay.errors.Unavailable` (no peers),
:class:`~omnirelay.errors.ResourceExhausted` (no deadline and every peer
refused) or :class:`~omnirelay.errors.DeadlineExceeded`; it releases the GIL
while it waits, so another thread may release a lease or advance the clock.
"""

from __future__ import annotations

from typing import Any, Dict, List

from omnirelay._core import (  # noqa: F401  (re-exported)
    AcquireResult,
    BreakerState,
    CircuitBreaker,
    CircuitBreakerOptions,
    Peer,
    PeerDescriptor,
    PeerLease,
    PeerLeaseHealthTracker,
    PeerListCoordinator,
    PeerStatus,
    chooser_names as _chooser_names,
    peer_metric_descriptors as _peer_metric_descriptors,
)

__all__ = [
    "AcquireResult",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "Peer",
    "PeerDescriptor",
    "PeerLease",
    "PeerLeaseHealthTracker",
    "PeerListCoordinator",
    "PeerStatus",
    "chooser_names",
    "metric_descriptors",
]


def chooser_names() -> List[str]:
    """Names accepted by ``PeerListCoordinator(chooser=...)``, sorted."""
    return list(_chooser_names())


def metric_descriptors() -> List[Dict[str, Any]]:
    """The peer kit's metric table: ``name``, ``kind``, ``unit``, ``help``."""
    return list(_peer_metric_descriptors())
