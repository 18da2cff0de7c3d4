#include "omnirelay/shards/rebalance.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/strings/numbers.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/request_meta.h"

namespace omnirelay::shards {
namespace {

// Read, then compare-and-swap on what was read; one retry covers a racing
// writer (the load key has one writer; the budget key is rarely written).
core::StatusOr<coord::Revision> ReadModifyWrite(
    coord::LeadershipStore& store, const std::string& key,
    const std::function<std::string(const std::optional<coord::KeyValue>&)>& next) {
  core::Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto current = store.Get(key);
    if (!current.ok()) return current.status();
    const coord::Revision expected = current->has_value() ? (*current)->mod_revision : 0;
    auto written = store.CompareAndSwap(key, next(*current), expected);
    if (written.ok() || written.status().code() != core::StatusCode::kFailedPrecondition) {
      return written;
    }
    last = written.status();
  }
  return last;
}

}  // namespace

nlohmann::json NodeLoad::ToJson() const {
  nlohmann::json shards = nlohmann::json::object();
  for (const auto& [shard, q] : shard_qps) shards[std::to_string(shard)] = q;
  return {{"node", node}, {"pending", pending}, {"qps", qps}, {"shardQps", shards}, {"at", at}};
}

std::optional<NodeLoad> NodeLoad::FromJson(const nlohmann::json& json) {
  if (!json.is_object() || !json.contains("node") || !json["node"].is_string()) return {};
  NodeLoad load;
  load.node = json["node"].get<std::string>();
  load.pending = json.value("pending", std::int64_t{0});
  load.qps = json.value("qps", 0.0);
  load.at = json.value("at", "");
  if (json.contains("shardQps") && json["shardQps"].is_object()) {
    for (const auto& [shard, q] : json["shardQps"].items()) {
      std::uint32_t id = 0;
      if (q.is_number() && absl::SimpleAtoi(shard, &id)) load.shard_qps[id] = q.get<double>();
    }
  }
  return load;
}

std::string LoadKey(std::string_view ns, std::string_view node) {
  return "shards/" + std::string(ns) + "/load/" + std::string(node);
}

core::Status PublishLoad(coord::LeadershipStore& store, std::string_view ns, const NodeLoad& load) {
  const std::string value = load.ToJson().dump();
  auto written = ReadModifyWrite(store, LoadKey(ns, load.node),
                                 [&](const std::optional<coord::KeyValue>&) { return value; });
  return written.status();
}

core::StatusOr<std::map<std::string, NodeLoad>> ReadLoads(coord::LeadershipStore& store,
                                                          std::string_view ns) {
  auto listed = store.List("shards/" + std::string(ns) + "/load/");
  if (!listed.ok()) return listed.status();
  std::map<std::string, NodeLoad> out;
  for (const auto& kv : *listed) {
    auto load = NodeLoad::FromJson(nlohmann::json::parse(kv.value, nullptr, false));
    if (load) out[load->node] = std::move(*load);
  }
  return out;
}

std::size_t ChooseFewestPending(const std::vector<RebalanceCandidate>& candidates,
                                std::string* chooser) {
  const bool any_known = std::any_of(candidates.begin(), candidates.end(),
                                     [](const RebalanceCandidate& c) { return c.load_known; });
  std::size_t best = 0;
  if (!any_known) {
    // No live load anywhere (reports not published yet): spread by shards owned.
    for (std::size_t i = 1; i < candidates.size(); ++i) {
      if (candidates[i].shards_owned < candidates[best].shards_owned) best = i;
    }
    if (chooser != nullptr) *chooser = "fewest-shards";
    return best;
  }
  // Strictly better only: equal candidates keep the earlier one (stable).
  auto better = [](const RebalanceCandidate& a, const RebalanceCandidate& b) {
    if (a.load_known != b.load_known) return a.load_known;
    if (a.pending != b.pending) return a.pending < b.pending;
    return a.qps < b.qps;
  };
  for (std::size_t i = 1; i < candidates.size(); ++i) {
    if (better(candidates[i], candidates[best])) best = i;
  }
  if (chooser != nullptr) *chooser = "fewest-pending";
  return best;
}

nlohmann::json RebalanceDecision::ToJson() const {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& c : candidates) {
    list.push_back({{"node", c.node},
                    {"pending", c.load_known ? nlohmann::json(c.pending) : nlohmann::json(nullptr)},
                    {"qps", c.load_known ? nlohmann::json(c.qps) : nlohmann::json(nullptr)},
                    {"shardsOwned", c.shards_owned},
                    {"loadAt", c.load_at},
                    {"chosen", c.node == to}});
  }
  return {{"namespace", ns},
          {"shard", shard},
          {"from", from},
          {"to", to},
          {"reason", reason},
          {"chooser", chooser},
          {"requestedBy", requested_by},
          {"requestedQps", requested_qps},
          {"at", at},
          {"version", version},
          {"candidates", std::move(list)}};
}

// --- budgets ---

nlohmann::json BudgetOverride::ToJson() const {
  nlohmann::json shards = nlohmann::json::object();
  for (const auto& [shard, q] : shard_qps) shards[std::to_string(shard)] = q;
  return {{"namespace", ns_qps ? nlohmann::json(*ns_qps) : nlohmann::json(nullptr)},
          {"shards", std::move(shards)}};
}

BudgetOverride BudgetOverride::FromJson(const nlohmann::json& json) {
  BudgetOverride out;
  if (!json.is_object()) return out;
  if (json.contains("namespace") && json["namespace"].is_number()) {
    out.ns_qps = json["namespace"].get<double>();
  }
  if (json.contains("shards") && json["shards"].is_object()) {
    for (const auto& [shard, q] : json["shards"].items()) {
      std::uint32_t id = 0;
      if (q.is_number() && absl::SimpleAtoi(shard, &id)) out.shard_qps[id] = q.get<double>();
    }
  }
  return out;
}

double BudgetOverride::For(std::uint32_t shard, double configured) const {
  if (auto it = shard_qps.find(shard); it != shard_qps.end()) return it->second;
  return ns_qps.value_or(configured);
}

std::string BudgetKey(std::string_view ns) { return "shards/" + std::string(ns) + "/budget"; }

core::StatusOr<BudgetOverride> ReadBudget(coord::LeadershipStore& store, std::string_view ns) {
  auto kv = store.Get(BudgetKey(ns));
  if (!kv.ok()) return kv.status();
  if (!kv->has_value()) return BudgetOverride{};
  return BudgetOverride::FromJson(nlohmann::json::parse((*kv)->value, nullptr, false));
}

core::StatusOr<BudgetOverride> SetBudget(coord::LeadershipStore& store, std::string_view ns,
                                         std::optional<std::uint32_t> shard, double qps,
                                         std::string_view set_by) {
  if (!std::isfinite(qps) || qps < 0) {
    return absl::InvalidArgumentError("qps must be a number >= 0 (0 = no budget)");
  }
  BudgetOverride stored;
  auto written =
      ReadModifyWrite(store, BudgetKey(ns), [&](const std::optional<coord::KeyValue>& current) {
        stored =
            current
                ? BudgetOverride::FromJson(nlohmann::json::parse(current->value, nullptr, false))
                : BudgetOverride{};
        if (shard) {
          stored.shard_qps[*shard] = qps;
        } else {
          stored.ns_qps = qps;
        }
        return stored.ToJson().dump();
      });
  if (!written.ok()) return written.status();
  core::LogInfo("shards.budget.set", {{"namespace", ns},
                                      {"shard", shard ? nlohmann::json(*shard) : nullptr},
                                      {"qps", qps},
                                      {"setBy", set_by}});
  return stored;
}

}  // namespace omnirelay::shards
