#pragma once
// The peer kit's metric descriptor table: every metric the kit records, with
// the seeds' dotted names. Registration, /metrics and docs/peers.md all come
// from this one table.
//
// Tags: rpc.service, rpc.procedure, rpc.transport (from the coordinator's
// options) and rpc.peer (the peer id) on per-peer series;
// peer.rejection_reason on lease_rejected; peer.breaker.from/peer.breaker.to
// on breaker transitions.
//
// Thread-safety: the table is immutable; PeerSeries handles are created once
// per peer (Get* takes the registry mutex) and then recorded into lock-free.
#include <span>

#include "omnirelay/core/metrics.h"

namespace omnirelay::peers {

namespace metric {
extern const core::MetricDescriptor kInflight;
extern const core::MetricDescriptor kSuccesses;
extern const core::MetricDescriptor kFailures;
extern const core::MetricDescriptor kLeaseRejected;
extern const core::MetricDescriptor kPoolExhausted;
extern const core::MetricDescriptor kAcquireDeadlineExceeded;
extern const core::MetricDescriptor kLeaseDuration;
extern const core::MetricDescriptor kLeaseHealthy;
extern const core::MetricDescriptor kLeaseUnhealthy;
extern const core::MetricDescriptor kLeasePendingReassignments;
extern const core::MetricDescriptor kLeaseAssignments;
extern const core::MetricDescriptor kLeaseHeartbeats;
extern const core::MetricDescriptor kLeaseDisconnects;
extern const core::MetricDescriptor kBreakerTransitions;
}  // namespace metric

// Every descriptor above, in documentation order.
std::span<const core::MetricDescriptor* const> PeerMetricDescriptors();

// Tag keys.
inline constexpr char kTagService[] = "rpc.service";
inline constexpr char kTagProcedure[] = "rpc.procedure";
inline constexpr char kTagTransport[] = "rpc.transport";
inline constexpr char kTagPeer[] = "rpc.peer";
inline constexpr char kTagRejectionReason[] = "peer.rejection_reason";
inline constexpr char kTagBreakerFrom[] = "peer.breaker.from";
inline constexpr char kTagBreakerTo[] = "peer.breaker.to";

}  // namespace omnirelay::peers
