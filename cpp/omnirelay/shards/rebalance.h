#pragma once
// Load-aware rebalancing: what each node reports about its load, how the
// namespace's leader picks the replica a hot shard moves to, and runtime QPS
// budgets.
//
//   * Load reports (`shards/<ns>/load/<node>`): every node writes, on each
//     reconcile, its pending calls (admitted inbound calls in flight, the
//     dispatcher's count), its QPS over the shards it owns and the per-shard
//     QPS of those above zero, stamped with the time. Only that node writes
//     its key (a compare-and-swap on its own revision); a report older than
//     kLoadStaleAfter counts as unknown.
//   * The chooser (ChooseFewestPending): among the shard's replicas, the one
//     with the fewest pending calls; ties: the lower QPS, then the earlier
//     replica in the shard's placement (stable). Replicas without a fresh
//     report rank after every replica with one; with no report at all the
//     leader falls back to the replica owning the fewest shards (chooser
//     "fewest-shards"). The decision (candidates with their pending/QPS/
//     shards owned, the chosen one, the chooser) is stored in the map version
//     that applies it (`lastRebalance`), so every node shows it.
//   * Budgets (`shards/<ns>/budget`): a runtime override of the configured
//     per-shard budget, for the whole namespace and/or single shards, set by
//     the SetShardBudget RPC / POST /omnirelay/control/shards/budget and read
//     by every owner on each reconcile.
//
// Threading: pure functions and store calls; no state of its own.
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "omnirelay/coord/leadership_store.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/shards/shard_map.h"

namespace omnirelay::shards {

struct NamespaceOptions;

// A load report older than this (writer's time vs. the reader's) is unknown.
inline constexpr core::Duration kLoadStaleAfter = std::chrono::seconds(10);

struct NodeLoad {
  std::string node{};
  std::int64_t pending = 0;                     // admitted calls in flight on the node
  double qps = 0;                               // summed over the shards it owns
  std::map<std::uint32_t, double> shard_qps{};  // owned shards with qps > 0
  std::string at{};                             // RFC 3339, when it was measured
  nlohmann::json ToJson() const;
  static std::optional<NodeLoad> FromJson(const nlohmann::json& json);
};

// `shards/<ns>/load/<node>`
std::string LoadKey(std::string_view ns, std::string_view node);
core::Status PublishLoad(coord::LeadershipStore& store, std::string_view ns, const NodeLoad& load);
// Every node's latest report of `ns`, by node id (stale ones included).
core::StatusOr<std::map<std::string, NodeLoad>> ReadLoads(coord::LeadershipStore& store,
                                                          std::string_view ns);

struct RebalanceCandidate {
  std::string node{};
  bool load_known = false;  // a fresh report exists
  std::int64_t pending = 0;
  double qps = 0;
  int shards_owned = 0;
  std::string load_at{};
};

// Index of the chosen candidate (candidates in placement order, non-empty):
// fewest pending among those with a known load (ties: lower QPS, then
// earlier); with no known load at all, fewest shards owned (ties: earlier).
// `chooser` is set to "fewest-pending" or "fewest-shards".
std::size_t ChooseFewestPending(const std::vector<RebalanceCandidate>& candidates,
                                std::string* chooser);

// The leader's record of one applied move (map field `lastRebalance`).
struct RebalanceDecision {
  std::string ns{};
  std::uint32_t shard = 0;
  std::string from{};
  std::string to{};
  std::string reason{};        // manual, over-budget
  std::string chooser{};       // fewest-pending, fewest-shards, named
  std::string requested_by{};  // the node that asked
  double requested_qps = 0;    // the shard's QPS the requester measured
  std::string at{};            // when the leader decided
  std::int64_t version = 0;    // the map version that applies it
  std::vector<RebalanceCandidate> candidates{};
  nlohmann::json ToJson() const;
};

// --- runtime budgets ---

struct BudgetOverride {
  std::optional<double> ns_qps{};               // replaces the configured budget
  std::map<std::uint32_t, double> shard_qps{};  // per shard, over ns_qps/configured
  nlohmann::json ToJson() const;
  static BudgetOverride FromJson(const nlohmann::json& json);
  // The budget of `shard` (0 = none).
  double For(std::uint32_t shard, double configured) const;
};

// `shards/<ns>/budget`
std::string BudgetKey(std::string_view ns);
core::StatusOr<BudgetOverride> ReadBudget(coord::LeadershipStore& store, std::string_view ns);
// Sets the budget of one shard (`shard`) or of the namespace (nullopt);
// `qps` >= 0 (0 = none). INVALID_ARGUMENT for a negative/non-finite qps.
// Returns the override as stored.
core::StatusOr<BudgetOverride> SetBudget(coord::LeadershipStore& store, std::string_view ns,
                                         std::optional<std::uint32_t> shard, double qps,
                                         std::string_view set_by);

}  // namespace omnirelay::shards
