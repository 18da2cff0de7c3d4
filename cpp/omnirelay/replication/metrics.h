#pragma once
// The replication metric table (the first two names are the seed's).
#include "omnirelay/core/metrics.h"

namespace omnirelay::replication::metric {

inline const core::MetricDescriptor kEvents{
    "omnirelay.resourcelease.replication.events", core::MetricKind::kCounter, "{event}",
    "Replication events applied by checkpointing sinks (tags: namespace, shard, replay, sink)"};
inline const core::MetricDescriptor kLag{
    "omnirelay.resourcelease.replication.lag", core::MetricKind::kHistogram, "ms",
    "Time from a queue mutation to its application by a checkpointing sink"};
inline const core::MetricDescriptor kDuplicates{
    "omnirelay.resourcelease.replication.duplicates", core::MetricKind::kCounter, "{event}",
    "Events a checkpointing sink dropped because it had applied them already"};
inline const core::MetricDescriptor kTryAddMisses{
    "omnirelay.resourcelease.deterministic.try_add.misses", core::MetricKind::kCounter, "{effect}",
    "Effects recorded for the first time (the effect runs)"};
inline const core::MetricDescriptor kTryAddHits{
    "omnirelay.resourcelease.deterministic.try_add.hits", core::MetricKind::kCounter, "{effect}",
    "Effects already recorded (a replay: the effect is skipped)"};
inline const core::MetricDescriptor kStoreLatency{
    "omnirelay.resourcelease.deterministic.store.latency", core::MetricKind::kHistogram, "ms",
    "Deterministic state store call latency (tags: deterministic.store, deterministic.operation)"};
inline const core::MetricDescriptor kStoreErrors{
    "omnirelay.resourcelease.deterministic.store.errors", core::MetricKind::kCounter, "{call}",
    "Deterministic state store calls that failed"};

}  // namespace omnirelay::replication::metric
