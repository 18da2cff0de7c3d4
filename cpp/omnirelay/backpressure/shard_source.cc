#include "omnirelay/backpressure/shard_source.h"

namespace omnirelay::backpressure {

void ShardPressureSampler::Start() { Schedule(); }

void ShardPressureSampler::Schedule() {
  if (stopped_.load()) return;
  clock_->ScheduleAt(clock_->Now() + options_.interval, [weak = weak_from_this()] {
    auto self = weak.lock();
    if (!self || self->stopped_.load()) return;
    self->Sample();
    self->Schedule();
  });
}

void ShardPressureSampler::Sample() {
  const auto now = clock_->Now();
  for (const auto& ns : router_->namespaces()) {
    if (ns.budget_qps <= 0) continue;
    const auto* meter = router_->meter(ns.spec.ns);
    if (meter == nullptr) continue;
    for (std::uint32_t shard = 0; shard < meter->shard_count(); ++shard) {
      const double qps = meter->Qps(shard, now);
      const std::string name = SourceName(ns.spec.ns, shard);
      if (!known_.count(name)) {
        if (qps <= 0) continue;
        hub_->AddLevelSource(name, {.high = ns.budget_qps,
                                    .low = ns.budget_qps * options_.low_ratio,
                                    .min_hold = options_.min_hold});
        known_.insert(name);
      }
      // The owner's own admission (shards/shard_outbound.h) reads the flag.
      router_->SetPressured(ns.spec.ns, shard, hub_->UpdateLevel(name, qps));
    }
  }
}

}  // namespace omnirelay::backpressure
