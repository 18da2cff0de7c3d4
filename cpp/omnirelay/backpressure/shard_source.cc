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
    const auto* meter = router_->meter(ns.spec.ns);
    if (meter == nullptr) continue;
    for (std::uint32_t shard = 0; shard < meter->shard_count(); ++shard) {
      // The effective budget (runtime override, else configured; 0 = none).
      const double budget = meter->Budget(shard);
      const std::string name = SourceName(ns.spec.ns, shard);
      auto known = known_.find(name);
      if (known == known_.end() && budget <= 0) continue;
      const double qps = meter->Qps(shard, now);
      if (known == known_.end()) {
        if (qps <= 0) continue;
        hub_->AddLevelSource(name, Watermarks(budget));
        known = known_.emplace(name, budget).first;
      } else if (known->second != budget) {
        // The budget changed at run time: new watermarks, same state (an
        // active source stays active until the level falls below the new
        // low watermark). A removed budget (0) clears on the next level.
        hub_->SetLevelWatermarks(name, Watermarks(budget));
        known->second = budget;
      }
      // The owner's own admission (shards/shard_outbound.h) reads the flag.
      router_->SetPressured(ns.spec.ns, shard, hub_->UpdateLevel(name, qps));
    }
  }
}

}  // namespace omnirelay::backpressure
