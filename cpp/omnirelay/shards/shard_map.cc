#include "omnirelay/shards/shard_map.h"

#include <algorithm>

namespace omnirelay::shards {

std::string_view StrategyName(Strategy strategy) {
  switch (strategy) {
    case Strategy::kRing:
      return "ring";
    case Strategy::kRendezvous:
      return "rendezvous";
    case Strategy::kLocality:
      return "locality";
  }
  return "rendezvous";
}

std::optional<Strategy> ParseStrategy(std::string_view name) {
  if (name == "ring" || name == "consistent-hash") return Strategy::kRing;
  if (name == "rendezvous" || name == "hrw") return Strategy::kRendezvous;
  if (name == "locality" || name == "locality-aware") return Strategy::kLocality;
  return std::nullopt;
}

namespace {

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

}  // namespace

core::Status ShardSpec::Validate() const {
  if (!ValidName(ns)) {
    return absl::InvalidArgumentError("namespace '" + ns +
                                      "' must be 1-128 characters of [A-Za-z0-9._-]");
  }
  if (shard_count == 0 || shard_count > kMaxShardCount) {
    return absl::InvalidArgumentError("shardCount must be in 1.." + std::to_string(kMaxShardCount));
  }
  if (replicas > 16) return absl::InvalidArgumentError("replicas must be in 0..16");
  if (strategy == Strategy::kRing && (virtual_nodes == 0 || virtual_nodes > kMaxVirtualNodes)) {
    return absl::InvalidArgumentError("virtualNodes must be in 1.." +
                                      std::to_string(kMaxVirtualNodes));
  }
  return absl::OkStatus();
}

std::optional<std::uint32_t> ShardMap::IndexOf(std::string_view id) const {
  auto it = std::lower_bound(nodes.begin(), nodes.end(), id,
                             [](const ShardNode& n, std::string_view v) { return n.id < v; });
  if (it == nodes.end() || it->id != id) return std::nullopt;
  return static_cast<std::uint32_t>(it - nodes.begin());
}

bool ShardMap::SameInputs(const ShardSpec& other_spec,
                          const std::vector<ShardNode>& other_nodes) const {
  if (!(spec == other_spec) || other_nodes.size() != nodes.size()) return false;
  std::vector<ShardNode> sorted = other_nodes;
  std::sort(sorted.begin(), sorted.end(),
            [](const ShardNode& a, const ShardNode& b) { return a.id < b.id; });
  return sorted == nodes;
}

core::Status ShardMap::Move(std::uint32_t shard, std::string_view to, std::string reason,
                            std::string at) {
  if (shard >= spec.shard_count) {
    return absl::InvalidArgumentError("shard " + std::to_string(shard) + " is out of range (0.." +
                                      std::to_string(spec.shard_count - 1) + ")");
  }
  auto index = IndexOf(to);
  const std::size_t row = static_cast<std::size_t>(shard) * width;
  std::size_t k = 1;
  while (index && k < width && placement[row + k] != *index) ++k;
  if (!index || k >= width) {
    std::string replicas;
    for (std::size_t r = 1; r < width; ++r) {
      replicas += (replicas.empty() ? "" : ", ") + nodes[placement[row + r]].id;
    }
    return core::MakeStatus(core::StatusCode::kFailedPrecondition,
                            std::string(to) + " is not a replica of shard " +
                                std::to_string(shard) +
                                " (replicas: " + (replicas.empty() ? "none" : replicas) + ")",
                            "not-a-replica");
  }
  const std::string from = nodes[placement[row]].id;
  std::swap(placement[row], placement[row + k]);
  moves.erase(std::remove_if(moves.begin(), moves.end(),
                             [&](const ShardMove& m) { return m.shard == shard; }),
              moves.end());
  moves.push_back({shard, from, std::string(to), std::move(reason), std::move(at)});
  return absl::OkStatus();
}

const ShardMove* ShardMap::MoveOf(std::uint32_t shard) const {
  for (const auto& m : moves) {
    if (m.shard == shard) return &m;
  }
  return nullptr;
}

nlohmann::json ShardMap::ToJson() const {
  nlohmann::json nodes_json = nlohmann::json::array();
  for (const auto& n : nodes) {
    nodes_json.push_back(
        {{"id", n.id}, {"address", n.address}, {"region", n.region}, {"zone", n.zone}});
  }
  nlohmann::json shards_json = nlohmann::json::array();
  for (std::uint32_t s = 0; s < spec.shard_count; ++s) {
    auto p = Placement(s);
    shards_json.push_back(std::vector<std::uint32_t>(p.begin(), p.end()));
  }
  nlohmann::json moves_json = nlohmann::json::array();
  for (const auto& m : moves) {
    moves_json.push_back(
        {{"shard", m.shard}, {"from", m.from}, {"to", m.to}, {"reason", m.reason}, {"at", m.at}});
  }
  return {{"namespace", spec.ns},
          {"version", version},
          {"moves", std::move(moves_json)},
          {"lastRebalance", last_rebalance},
          {"strategy", StrategyName(spec.strategy)},
          {"shardCount", spec.shard_count},
          {"replicas", spec.replicas},
          {"virtualNodes", spec.virtual_nodes},
          {"locality", {{"region", spec.region}, {"zone", spec.zone}}},
          {"writtenBy", written_by},
          {"fencingToken", fencing_token},
          {"writtenAt", written_at},
          {"nodes", std::move(nodes_json)},
          {"shards", std::move(shards_json)}};
}

core::StatusOr<ShardMap> ShardMap::FromJson(const nlohmann::json& json) {
  if (!json.is_object()) return absl::InvalidArgumentError("shard map: not an object");
  ShardMap map;
  try {
    map.spec.ns = json.at("namespace").get<std::string>();
    map.version = json.at("version").get<std::int64_t>();
    auto strategy = ParseStrategy(json.at("strategy").get<std::string>());
    if (!strategy) return absl::InvalidArgumentError("shard map: unknown strategy");
    map.spec.strategy = *strategy;
    map.spec.shard_count = json.at("shardCount").get<std::uint32_t>();
    map.spec.replicas = json.at("replicas").get<std::uint32_t>();
    map.spec.virtual_nodes = json.value("virtualNodes", 128u);
    if (json.contains("locality")) {
      map.spec.region = json["locality"].value("region", "");
      map.spec.zone = json["locality"].value("zone", "");
    }
    map.written_by = json.value("writtenBy", "");
    map.fencing_token = json.value("fencingToken", std::int64_t{0});
    map.written_at = json.value("writtenAt", "");
    for (const auto& n : json.at("nodes")) {
      map.nodes.push_back({n.at("id").get<std::string>(), n.value("address", ""),
                           n.value("region", ""), n.value("zone", "")});
    }
    const auto& shards = json.at("shards");
    if (map.spec.shard_count == 0 || map.spec.shard_count > kMaxShardCount ||
        shards.size() != map.spec.shard_count || map.nodes.empty()) {
      return absl::InvalidArgumentError("shard map: shard count does not match its shards");
    }
    map.width = static_cast<std::uint32_t>(shards[0].size());
    if (map.width == 0 || map.width > map.nodes.size()) {
      return absl::InvalidArgumentError("shard map: bad placement width");
    }
    map.placement.reserve(static_cast<std::size_t>(map.spec.shard_count) * map.width);
    for (const auto& row : shards) {
      if (row.size() != map.width) {
        return absl::InvalidArgumentError("shard map: ragged placement");
      }
      for (const auto& index : row) {
        auto i = index.get<std::uint32_t>();
        if (i >= map.nodes.size()) {
          return absl::InvalidArgumentError("shard map: node index out of range");
        }
        map.placement.push_back(i);
      }
    }
    if (json.contains("moves")) {
      for (const auto& m : json["moves"]) {
        ShardMove move{m.at("shard").get<std::uint32_t>(), m.value("from", ""),
                       m.at("to").get<std::string>(), m.value("reason", ""), m.value("at", "")};
        if (move.shard >= map.spec.shard_count) {
          return absl::InvalidArgumentError("shard map: move of a shard out of range");
        }
        map.moves.push_back(std::move(move));
      }
    }
    if (json.contains("lastRebalance") && json["lastRebalance"].is_object()) {
      map.last_rebalance = json["lastRebalance"];
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(std::string("shard map: ") + e.what());
  }
  if (!std::is_sorted(map.nodes.begin(), map.nodes.end(),
                      [](const ShardNode& a, const ShardNode& b) { return a.id < b.id; })) {
    return absl::InvalidArgumentError("shard map: nodes are not sorted by id");
  }
  return map;
}

}  // namespace omnirelay::shards
