#pragma once
// ShardRouter: key -> shard -> owner under this node's current map version,
// and ShardMeter: per-shard QPS metered where the shard is served.
//
// The router is what every shard-aware caller uses (the shard route's
// outbound, the control endpoint, future choosers): it never guesses. A
// namespace that is not configured, a call without a key, a namespace with
// no map yet and an owner that is not routable (not alive in the membership)
// are errors with the reason, never a silent fallback to another node:
//
//   FAILED_PRECONDITION  unknown-shard-namespace   namespace not configured here
//   INVALID_ARGUMENT     missing-shard-key         empty Rpc-Shard-Key
//   UNAVAILABLE          no-shard-map              no version of the map seen yet
//   UNAVAILABLE          shard-owner-unroutable    the map names an owner that is
//                                                  dead/left/unknown right now
//
// Thread-safety: Route and the meters are called concurrently from the data
// path; they read an immutable map snapshot (one shared_ptr copy) and
// per-shard atomics, no other lock.
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/shards/map_store.h"

namespace omnirelay::shards {

// Calls served per shard over the last complete seconds: 4 one-second cells
// per shard, each one 64-bit atomic packing (second tag, count), so a record
// is one CAS loop and a cell is reset exactly once per second without a lock.
class ShardMeter {
 public:
  explicit ShardMeter(std::uint32_t shard_count);
  void Record(std::uint32_t shard, core::TimePoint now);
  // Mean calls per second over the 3 complete seconds before `now`.
  double Qps(std::uint32_t shard, core::TimePoint now) const;
  std::int64_t Total(std::uint32_t shard) const;
  // Calls recorded in the second of `now` so far (the owner's per-second
  // admission of a shard under backpressure).
  std::uint64_t CurrentSecond(std::uint32_t shard, core::TimePoint now) const;
  // Whether the shard is under backpressure here (set by the backpressure
  // sampler from its watermark state; read on the data path).
  void SetPressured(std::uint32_t shard, bool pressured);
  bool Pressured(std::uint32_t shard) const;
  // The shard's effective budget in calls/s (0 = none): the configured
  // `budget`, or the runtime override (SetShardBudget) once the shard manager
  // or the node that took the call has applied it (ShardRouter::ApplyBudgets).
  // Read by the backpressure sampler and the owner's admission.
  void SetBudget(std::uint32_t shard, double qps);
  double Budget(std::uint32_t shard) const;
  std::uint32_t shard_count() const { return shard_count_; }

 private:
  static constexpr int kCells = 4;
  std::uint32_t shard_count_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> cells_;
  std::unique_ptr<std::atomic<std::int64_t>[]> totals_;
  std::unique_ptr<std::atomic<bool>[]> pressured_;
  std::unique_ptr<std::atomic<double>[]> budgets_;
};

struct ShardRoute {
  std::shared_ptr<const ShardMap> map;  // keeps `owner` alive
  std::uint32_t shard = 0;
  const ShardNode* owner = nullptr;
  bool local = false;  // this node owns the shard under `map`
};

class ShardRouter {
 public:
  using Routable = std::function<bool(std::string_view node_id)>;
  ShardRouter(std::string self_id, std::vector<NamespaceOptions> namespaces,
              std::shared_ptr<ShardMapHolder> holder, Routable routable,
              std::shared_ptr<core::Clock> clock);

  core::StatusOr<ShardRoute> Route(std::string_view ns, std::string_view key) const;
  // Counts a call served on this node for `shard` of `ns` (no-op for unknown).
  void RecordServed(std::string_view ns, std::uint32_t shard) const;
  const ShardMeter* meter(std::string_view ns) const;
  // The backpressure sampler flags shards here (the meters are the router's
  // mutable per-shard state; no-op for an unknown namespace).
  void SetPressured(std::string_view ns, std::uint32_t shard, bool pressured) const;
  // Makes `budgets` (the runtime override over the configured budget) the
  // effective budget of every shard of `ns` (no-op for an unknown namespace).
  void ApplyBudgets(std::string_view ns, const BudgetOverride& budgets) const;
  // The effective budget of `shard` of `ns` (0 = none or unknown).
  double EffectiveBudget(std::string_view ns, std::uint32_t shard) const;
  const NamespaceOptions* Find(std::string_view ns) const;
  // Alive or suspect in this node's membership (self always); the check
  // Route applies to owners, for shard-aware callers choosing replicas.
  bool IsRoutable(std::string_view node_id) const {
    return node_id == self_id_ || !routable_ || routable_(node_id);
  }
  const std::vector<NamespaceOptions>& namespaces() const { return namespaces_; }
  const std::string& self_id() const { return self_id_; }
  const std::shared_ptr<ShardMapHolder>& holder() const { return holder_; }
  const std::shared_ptr<core::Clock>& clock() const { return clock_; }

  // GET /omnirelay/control/shards: per namespace the version, the spec, the
  // nodes and per shard owner, replicas, QPS served here and the budget.
  nlohmann::json ToJson(std::string_view only_ns = {}) const;

 private:
  std::string self_id_;
  std::vector<NamespaceOptions> namespaces_;
  std::shared_ptr<ShardMapHolder> holder_;
  Routable routable_;
  std::shared_ptr<core::Clock> clock_;
  std::map<std::string, std::unique_ptr<ShardMeter>, std::less<>> meters_;
};

}  // namespace omnirelay::shards
