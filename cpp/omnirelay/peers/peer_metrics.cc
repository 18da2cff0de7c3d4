#include "omnirelay/peers/peer_metrics.h"

#include <array>

namespace omnirelay::peers {
namespace metric {
using core::MetricKind;
const core::MetricDescriptor kInflight{"omnirelay.peer.inflight", MetricKind::kUpDownCounter,
                                       "{request}", "Requests currently leased to a peer."};
const core::MetricDescriptor kSuccesses{"omnirelay.peer.successes", MetricKind::kCounter,
                                        "{request}",
                                        "Leases released with a non-server-failure outcome."};
const core::MetricDescriptor kFailures{
    "omnirelay.peer.failures", MetricKind::kCounter, "{request}",
    "Leases released with a server failure (core::IsServerFailure)."};
const core::MetricDescriptor kLeaseRejected{
    "omnirelay.peer.lease_rejected", MetricKind::kCounter, "{request}",
    "Peers that refused a lease while probed (peer.rejection_reason=busy|unhealthy|circuit_open)."};
const core::MetricDescriptor kPoolExhausted{
    "omnirelay.peer.pool_exhausted", MetricKind::kCounter, "{request}",
    "Requests without a deadline failed with ResourceExhausted after every peer refused."};
const core::MetricDescriptor kAcquireDeadlineExceeded{
    "omnirelay.peer.acquire_deadline_exceeded", MetricKind::kCounter, "{request}",
    "Requests whose deadline passed before (or while waiting for) a peer lease."};
const core::MetricDescriptor kLeaseDuration{"omnirelay.peer.lease.duration", MetricKind::kHistogram,
                                            "ms", "Latency reported on lease release."};
const core::MetricDescriptor kLeaseHealthy{"omnirelay.peer.lease.healthy", MetricKind::kGauge,
                                           "{peer}", "Peers eligible per the health tracker."};
const core::MetricDescriptor kLeaseUnhealthy{"omnirelay.peer.lease.unhealthy", MetricKind::kGauge,
                                             "{peer}",
                                             "Peers not eligible per the health tracker."};
const core::MetricDescriptor kLeasePendingReassignments{
    "omnirelay.peer.lease.pending_reassignments", MetricKind::kGauge, "{lease}",
    "Leases waiting to be reassigned away from a peer."};
const core::MetricDescriptor kLeaseAssignments{"omnirelay.peer.lease_assignments",
                                               MetricKind::kCounter, "{lease}",
                                               "Leases assigned to a peer (health tracker)."};
const core::MetricDescriptor kLeaseHeartbeats{"omnirelay.peer.lease_heartbeats",
                                              MetricKind::kCounter, "{heartbeat}",
                                              "Heartbeats recorded by the health tracker."};
const core::MetricDescriptor kLeaseDisconnects{"omnirelay.peer.lease_disconnects",
                                               MetricKind::kCounter, "{event}",
                                               "Peer disconnects recorded by the health tracker."};
const core::MetricDescriptor kBreakerTransitions{
    "omnirelay.peer.breaker.transitions", MetricKind::kCounter, "{transition}",
    "Circuit breaker state transitions (peer.breaker.from -> peer.breaker.to)."};
}  // namespace metric

std::span<const core::MetricDescriptor* const> PeerMetricDescriptors() {
  static const std::array<const core::MetricDescriptor*, 14> kAll = {
      &metric::kInflight,         &metric::kSuccesses,
      &metric::kFailures,         &metric::kLeaseRejected,
      &metric::kPoolExhausted,    &metric::kAcquireDeadlineExceeded,
      &metric::kLeaseDuration,    &metric::kLeaseHealthy,
      &metric::kLeaseUnhealthy,   &metric::kLeasePendingReassignments,
      &metric::kLeaseAssignments, &metric::kLeaseHeartbeats,
      &metric::kLeaseDisconnects, &metric::kBreakerTransitions};
  return kAll;
}

}  // namespace omnirelay::peers
