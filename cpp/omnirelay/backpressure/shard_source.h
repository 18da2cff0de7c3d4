#pragma once
// ShardPressureSampler: per-shard QPS (the shard router's meter, calls served
// on this node) against the namespace's budget, as hub level sources
// `shard/<namespace>/<shard>` with a WatermarkStateMachine each:
// high = budget, low = budget x lowRatio, minimum hold `min_hold`. The budget
// is the shard's effective one (ShardMeter::Budget: the runtime override of
// SetShardBudget once applied, else the configured `budget`); a change moves
// the watermarks without resetting the source's state.
// Each sample also flags the shard in the router (ShardRouter::SetPressured),
// so the shard's owner admits at most `budget` calls per second while it is
// under backpressure (backpressure.shardThrottle, docs/backpressure.md).
// Only shards with a budget are sampled; a shard gets a source the first
// time it shows traffic. Start() samples every `interval` on the clock until
// Stop() or destruction (the timer holds a weak pointer).
// Thread-safety: Sample() may run concurrently with everything but itself
// (one timer chain).
#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "omnirelay/backpressure/hub.h"
#include "omnirelay/shards/router.h"

namespace omnirelay::backpressure {

struct ShardPressureOptions {
  double low_ratio = 0.8;  // low watermark = budget x low_ratio
  core::Duration min_hold = std::chrono::seconds(2);
  core::Duration interval = std::chrono::milliseconds(500);
};

class ShardPressureSampler : public std::enable_shared_from_this<ShardPressureSampler> {
 public:
  ShardPressureSampler(std::shared_ptr<const shards::ShardRouter> router,
                       std::shared_ptr<BackpressureHub> hub, std::shared_ptr<core::Clock> clock,
                       ShardPressureOptions options)
      : router_(std::move(router)),
        hub_(std::move(hub)),
        clock_(std::move(clock)),
        options_(options) {}
  void Start();
  void Stop() { stopped_.store(true); }
  // One pass over every budgeted namespace's shards.
  void Sample();
  static std::string SourceName(const std::string& ns, std::uint32_t shard) {
    return "shard/" + ns + "/" + std::to_string(shard);
  }

 private:
  void Schedule();
  WatermarkOptions Watermarks(double budget) const {
    // No budget: nothing is ever high; a source still active clears.
    if (budget <= 0) return {.high = 1e300, .low = 1e300, .min_hold = options_.min_hold};
    return {.high = budget, .low = budget * options_.low_ratio, .min_hold = options_.min_hold};
  }
  std::shared_ptr<const shards::ShardRouter> router_;
  std::shared_ptr<BackpressureHub> hub_;
  std::shared_ptr<core::Clock> clock_;
  const ShardPressureOptions options_;
  std::map<std::string, double> known_;  // sources added to the hub -> their budget (Sample only)
  std::atomic<bool> stopped_{false};
};

}  // namespace omnirelay::backpressure
