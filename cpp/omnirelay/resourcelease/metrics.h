#pragma once
// The ResourceLease metric table: one descriptor per series, every series
// tagged `resourcelease.namespace` (the queue's namespace, "default" for the
// plain `resourcelease::*` queue). The first three names are the seed's.
#include <string_view>

#include "omnirelay/core/metrics.h"

namespace omnirelay::resourcelease {

inline constexpr std::string_view kNamespaceTag = "resourcelease.namespace";

namespace metric {
inline const core::MetricDescriptor kPending{"omnirelay.resourcelease.pending",
                                             core::MetricKind::kGauge, "{item}",
                                             "Items waiting to be leased"};
inline const core::MetricDescriptor kActive{"omnirelay.resourcelease.active",
                                            core::MetricKind::kGauge, "{item}",
                                            "Items leased and not yet completed or failed"};
inline const core::MetricDescriptor kBackpressureTransitions{
    "omnirelay.resourcelease.backpressure.transitions", core::MetricKind::kCounter, "1",
    "Backpressure state changes (on and off)"};
inline const core::MetricDescriptor kBackpressureActive{
    "omnirelay.resourcelease.backpressure.active", core::MetricKind::kGauge, "1",
    "1 while the queue is under backpressure"};
inline const core::MetricDescriptor kDeadLetterDepth{"omnirelay.resourcelease.dead_letter.depth",
                                                     core::MetricKind::kGauge, "{item}",
                                                     "Items kept in the dead-letter list"};
inline const core::MetricDescriptor kEnqueued{"omnirelay.resourcelease.enqueued",
                                              core::MetricKind::kCounter, "{item}",
                                              "New items accepted (duplicates excluded)"};
inline const core::MetricDescriptor kLeased{
    "omnirelay.resourcelease.leases", core::MetricKind::kCounter, "{lease}", "Leases handed out"};
inline const core::MetricDescriptor kCompleted{
    "omnirelay.resourcelease.completions", core::MetricKind::kCounter, "{item}", "Items completed"};
inline const core::MetricDescriptor kFailed{"omnirelay.resourcelease.failures",
                                            core::MetricKind::kCounter, "{attempt}",
                                            "Attempts that a worker failed"};
inline const core::MetricDescriptor kExpired{"omnirelay.resourcelease.expirations",
                                             core::MetricKind::kCounter, "{attempt}",
                                             "Leases that expired without completion"};
inline const core::MetricDescriptor kDeadLettered{"omnirelay.resourcelease.dead_letters",
                                                  core::MetricKind::kCounter, "{item}",
                                                  "Items moved to the dead-letter list"};
inline const core::MetricDescriptor kQueueWait{"omnirelay.resourcelease.queue_wait",
                                               core::MetricKind::kHistogram, "ms",
                                               "Time from (re)queue to lease"};
inline const core::MetricDescriptor kLeaseHold{"omnirelay.resourcelease.lease_hold",
                                               core::MetricKind::kHistogram, "ms",
                                               "Time from lease to complete or fail"};
}  // namespace metric

}  // namespace omnirelay::resourcelease
