#pragma once
// ShardPressureSampler: per-shard QPS (the shard router's meter, calls served
// on this node) against the namespace's budget, as hub level sources
// `shard/<namespace>/<shard>` with a WatermarkStateMachine each:
// high = budget, low = budget x lowRatio, minimum hold `min_hold`.
// Each sample also flags the shard in the router (ShardRouter::SetPressured),
// so the shard's owner admits at most `budget` calls per second while it is
// under backpressure (backpressure.shardThrottle, docs/backpressure.md).
// Only namespaces with a budget are sampled; a shard gets a source the first
// time it shows traffic. Start() samples every `interval` on the clock until
// Stop() or destruction (the timer holds a weak pointer).
// Thread-safety: Sample() may run concurrently with everything but itself
// (one timer chain).
#include <atomic>
#include <memory>
#include <set>
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
  std::shared_ptr<const shards::ShardRouter> router_;
  std::shared_ptr<BackpressureHub> hub_;
  std::shared_ptr<core::Clock> clock_;
  const ShardPressureOptions options_;
  std::set<std::string> known_;  // sources added to the hub (Sample only)
  std::atomic<bool> stopped_{false};
};

}  // namespace omnirelay::backpressure
