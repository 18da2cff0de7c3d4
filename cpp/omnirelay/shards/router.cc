#include "omnirelay/shards/router.h"

#include <algorithm>

namespace omnirelay::shards {
namespace {

constexpr int kTagBits = 24;
constexpr int kCountBits = 64 - kTagBits;
constexpr std::uint64_t kCountMask = (std::uint64_t{1} << kCountBits) - 1;

std::int64_t SecondOf(core::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}
std::uint64_t TagOf(std::int64_t second) {
  return static_cast<std::uint64_t>(second) & ((std::uint64_t{1} << kTagBits) - 1);
}

}  // namespace

ShardMeter::ShardMeter(std::uint32_t shard_count)
    : shard_count_(shard_count),
      cells_(new std::atomic<std::uint64_t>[static_cast<std::size_t>(shard_count) * kCells]),
      totals_(new std::atomic<std::int64_t>[shard_count]),
      pressured_(new std::atomic<bool>[shard_count]),
      budgets_(new std::atomic<double>[shard_count]) {
  for (std::size_t i = 0; i < static_cast<std::size_t>(shard_count) * kCells; ++i) cells_[i] = 0;
  for (std::uint32_t i = 0; i < shard_count; ++i) totals_[i] = 0;
  for (std::uint32_t i = 0; i < shard_count; ++i) pressured_[i] = false;
  for (std::uint32_t i = 0; i < shard_count; ++i) budgets_[i] = 0;
}

void ShardMeter::SetBudget(std::uint32_t shard, double qps) {
  if (shard < shard_count_) budgets_[shard].store(qps, std::memory_order_relaxed);
}

double ShardMeter::Budget(std::uint32_t shard) const {
  return shard < shard_count_ ? budgets_[shard].load(std::memory_order_relaxed) : 0;
}

std::uint64_t ShardMeter::CurrentSecond(std::uint32_t shard, core::TimePoint now) const {
  if (shard >= shard_count_) return 0;
  const std::int64_t second = SecondOf(now);
  const std::uint64_t v =
      cells_[static_cast<std::size_t>(shard) * kCells + static_cast<std::size_t>(second % kCells)]
          .load(std::memory_order_relaxed);
  return (v >> kCountBits) == TagOf(second) ? v & kCountMask : 0;
}

void ShardMeter::SetPressured(std::uint32_t shard, bool pressured) {
  if (shard < shard_count_) pressured_[shard].store(pressured, std::memory_order_relaxed);
}

bool ShardMeter::Pressured(std::uint32_t shard) const {
  return shard < shard_count_ && pressured_[shard].load(std::memory_order_relaxed);
}

void ShardMeter::Record(std::uint32_t shard, core::TimePoint now) {
  if (shard >= shard_count_) return;
  const std::int64_t second = SecondOf(now);
  const std::uint64_t tag = TagOf(second);
  auto& cell =
      cells_[static_cast<std::size_t>(shard) * kCells + static_cast<std::size_t>(second % kCells)];
  std::uint64_t seen = cell.load(std::memory_order_relaxed);
  for (;;) {
    const std::uint64_t next = (seen >> kCountBits) == tag ? seen + 1 : (tag << kCountBits) | 1;
    if (cell.compare_exchange_weak(seen, next, std::memory_order_relaxed)) break;
  }
  totals_[shard].fetch_add(1, std::memory_order_relaxed);
}

double ShardMeter::Qps(std::uint32_t shard, core::TimePoint now) const {
  if (shard >= shard_count_) return 0;
  const std::int64_t second = SecondOf(now);
  std::uint64_t sum = 0;
  for (int back = 1; back < kCells; ++back) {
    const std::int64_t s = second - back;
    const std::uint64_t v =
        cells_[static_cast<std::size_t>(shard) * kCells + static_cast<std::size_t>(s % kCells)]
            .load(std::memory_order_relaxed);
    if ((v >> kCountBits) == TagOf(s)) sum += v & kCountMask;
  }
  return static_cast<double>(sum) / (kCells - 1);
}

std::int64_t ShardMeter::Total(std::uint32_t shard) const {
  return shard < shard_count_ ? totals_[shard].load(std::memory_order_relaxed) : 0;
}

ShardRouter::ShardRouter(std::string self_id, std::vector<NamespaceOptions> namespaces,
                         std::shared_ptr<ShardMapHolder> holder, Routable routable,
                         std::shared_ptr<core::Clock> clock)
    : self_id_(std::move(self_id)),
      namespaces_(std::move(namespaces)),
      holder_(std::move(holder)),
      routable_(std::move(routable)),
      clock_(std::move(clock)) {
  for (const auto& ns : namespaces_) {
    auto meter = std::make_unique<ShardMeter>(ns.spec.shard_count);
    for (std::uint32_t s = 0; s < ns.spec.shard_count; ++s) meter->SetBudget(s, ns.budget_qps);
    meters_.emplace(ns.spec.ns, std::move(meter));
  }
}

const NamespaceOptions* ShardRouter::Find(std::string_view ns) const {
  for (const auto& n : namespaces_) {
    if (n.spec.ns == ns) return &n;
  }
  return nullptr;
}

const ShardMeter* ShardRouter::meter(std::string_view ns) const {
  auto it = meters_.find(ns);
  return it == meters_.end() ? nullptr : it->second.get();
}

core::StatusOr<ShardRoute> ShardRouter::Route(std::string_view ns, std::string_view key) const {
  if (Find(ns) == nullptr) {
    std::string known;
    for (const auto& n : namespaces_) known += (known.empty() ? "" : ", ") + n.spec.ns;
    return core::MakeStatus(core::StatusCode::kFailedPrecondition,
                            "shard namespace '" + std::string(ns) + "' is not configured on node " +
                                self_id_ + " (configured: " + (known.empty() ? "none" : known) +
                                ")",
                            "unknown-shard-namespace");
  }
  if (key.empty()) {
    return core::MakeStatus(
        core::StatusCode::kInvalidArgument,
        "a call to shard namespace '" + std::string(ns) + "' needs a shard key (Rpc-Shard-Key)",
        "missing-shard-key");
  }
  ShardRoute route;
  route.map = holder_->Get(ns);
  if (!route.map) {
    return core::MakeStatus(core::StatusCode::kUnavailable,
                            "no shard map for namespace '" + std::string(ns) + "' on node " +
                                self_id_ + " yet (its leader has not written one)",
                            "no-shard-map");
  }
  route.shard = route.map->ShardOf(key);
  route.owner = &route.map->Owner(route.shard);
  route.local = route.owner->id == self_id_;
  if (!route.local && routable_ && !routable_(route.owner->id)) {
    return core::MakeStatus(core::StatusCode::kUnavailable,
                            "owner " + route.owner->id + " of shard " +
                                std::to_string(route.shard) + " of '" + std::string(ns) +
                                "' (map version " + std::to_string(route.map->version) +
                                ") is not routable",
                            "shard-owner-unroutable");
  }
  return route;
}

void ShardRouter::SetPressured(std::string_view ns, std::uint32_t shard, bool pressured) const {
  auto it = meters_.find(ns);
  if (it != meters_.end()) it->second->SetPressured(shard, pressured);
}

void ShardRouter::ApplyBudgets(std::string_view ns, const BudgetOverride& budgets) const {
  const auto* options = Find(ns);
  auto it = meters_.find(ns);
  if (options == nullptr || it == meters_.end()) return;
  for (std::uint32_t s = 0; s < it->second->shard_count(); ++s) {
    it->second->SetBudget(s, budgets.For(s, options->budget_qps));
  }
}

double ShardRouter::EffectiveBudget(std::string_view ns, std::uint32_t shard) const {
  auto it = meters_.find(ns);
  return it != meters_.end() ? it->second->Budget(shard) : 0;
}

void ShardRouter::RecordServed(std::string_view ns, std::uint32_t shard) const {
  auto it = meters_.find(ns);
  if (it != meters_.end()) it->second->Record(shard, clock_->Now());
}

nlohmann::json ShardRouter::ToJson(std::string_view only_ns) const {
  nlohmann::json out = nlohmann::json::array();
  const auto now = clock_->Now();
  for (const auto& ns : namespaces_) {
    if (!only_ns.empty() && ns.spec.ns != only_ns) continue;
    const auto map = holder_->Get(ns.spec.ns);
    const ShardMeter* m = meter(ns.spec.ns);
    nlohmann::json entry = {{"namespace", ns.spec.ns},
                            {"strategy", StrategyName(ns.spec.strategy)},
                            {"shardCount", ns.spec.shard_count},
                            {"replicas", ns.spec.replicas},
                            {"budgetQps", ns.budget_qps},
                            {"leaderScope", ns.leader_scope},
                            {"service", ns.service},
                            {"version", map ? map->version : 0}};
    if (!map) {
      entry["map"] = nullptr;
      out.push_back(std::move(entry));
      continue;
    }
    entry["writtenBy"] = map->written_by;
    entry["fencingToken"] = map->fencing_token;
    entry["writtenAt"] = map->written_at;
    nlohmann::json nodes = nlohmann::json::array();
    std::vector<int> owned(map->nodes.size(), 0);
    for (std::uint32_t s = 0; s < map->shard_count(); ++s) ++owned[map->OwnerIndex(s)];
    for (std::size_t i = 0; i < map->nodes.size(); ++i) {
      const auto& n = map->nodes[i];
      nodes.push_back({{"id", n.id},
                       {"address", n.address},
                       {"region", n.region},
                       {"zone", n.zone},
                       {"shardsOwned", owned[i]},
                       {"routable", n.id == self_id_ || !routable_ || routable_(n.id)}});
    }
    entry["nodes"] = std::move(nodes);
    nlohmann::json shards = nlohmann::json::array();
    for (std::uint32_t s = 0; s < map->shard_count(); ++s) {
      auto placement = map->Placement(s);
      nlohmann::json replicas = nlohmann::json::array();
      for (std::size_t r = 1; r < placement.size(); ++r) {
        replicas.push_back(map->nodes[placement[r]].id);
      }
      const double qps = m ? m->Qps(s, now) : 0;
      shards.push_back({{"id", s},
                        {"owner", map->nodes[placement[0]].id},
                        {"replicas", std::move(replicas)},
                        {"qps", qps},
                        {"served", m ? m->Total(s) : 0},
                        {"overBudget", ns.budget_qps > 0 && qps > ns.budget_qps},
                        {"pressured", m != nullptr && m->Pressured(s)}});
    }
    entry["shards"] = std::move(shards);
    out.push_back(std::move(entry));
  }
  return {{"node", self_id_}, {"namespaces", std::move(out)}};
}

}  // namespace omnirelay::shards
