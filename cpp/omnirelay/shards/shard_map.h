#pragma once
// The shard map of one namespace: N shards, each with an owner and up to R
// replicas drawn from the members that existed when the map was computed,
// stamped with a version. A map is computed by a strategy (strategy.h) from a
// member list, written by the namespace's leader through the coordination
// store (map_store.h) and held, immutable, by every node.
//
// Layout: `nodes` sorted by id; `placement` is flat, `width` = 1 + replicas
// entries per shard (owner first), each an index into `nodes`. A lookup is a
// hash, a multiply-shift and two array reads: no allocation, no lock.
//
// Thread-safety: a ShardMap is a value; once published (shared_ptr<const>)
// it is never modified, so any number of threads read it.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "omnirelay/core/status.h"
#include "omnirelay/shards/hash.h"

namespace omnirelay::shards {

enum class Strategy : std::uint8_t { kRing, kRendezvous, kLocality };
// "ring", "rendezvous", "locality"
std::string_view StrategyName(Strategy strategy);
std::optional<Strategy> ParseStrategy(std::string_view name);

// A member that may own shards (a mesh member's identity and gRPC address).
struct ShardNode {
  std::string id;
  std::string address;
  std::string region;
  std::string zone;
  bool operator==(const ShardNode&) const = default;
};

// What a namespace's map is computed from (config `omniRelay.shards.namespaces.<ns>`).
struct ShardSpec {
  std::string ns;
  std::uint32_t shard_count = 64;
  std::uint32_t replicas = 1;  // besides the owner
  Strategy strategy = Strategy::kRendezvous;
  std::uint32_t virtual_nodes = 128;  // ring only
  // locality only: owners and replicas are taken from this zone first, then
  // this region, then anywhere.
  std::string region;
  std::string zone;
  bool operator==(const ShardSpec&) const = default;

  // INVALID_ARGUMENT naming the field (shardCount, replicas, virtualNodes, ...).
  core::Status Validate() const;
};

inline constexpr std::uint32_t kMaxShardCount = 1u << 20;
inline constexpr std::uint32_t kMaxVirtualNodes = 4096;

// An owner moved off the strategy's choice by a rebalance: the shard's owner
// is `to` (one of its replicas) instead of `from`. Kept in the map and
// re-applied when the map is recomputed, as long as `to` is still a replica.
struct ShardMove {
  std::uint32_t shard = 0;
  std::string from;
  std::string to;
  std::string reason;  // "manual", "over-budget"
  std::string at;      // RFC 3339, when the leader decided it
  bool operator==(const ShardMove&) const = default;
};

struct ShardMap {
  ShardSpec spec;
  std::int64_t version = 0;              // 1 for the first map of a namespace, +1 per write
  std::string written_by;                // the leader's node id
  std::int64_t fencing_token = 0;        // the leader's token when it wrote this version
  std::string written_at;                // RFC 3339
  std::vector<ShardNode> nodes;          // sorted by id
  std::uint32_t width = 1;               // 1 + effective replicas (min(replicas, nodes - 1))
  std::vector<std::uint32_t> placement;  // shard_count * width node indices
  std::vector<ShardMove> moves;          // rebalances applied on top of the strategy
  // The leader's record of the latest move it decided (rebalance.h's
  // RebalanceDecision as JSON: candidates with their load, the chosen one);
  // null before the first. Kept across versions until the next move.
  nlohmann::json last_rebalance;

  std::uint32_t shard_count() const { return spec.shard_count; }
  std::uint32_t ShardOf(std::string_view key) const { return ShardOfKey(key, spec.shard_count); }
  std::uint32_t OwnerIndex(std::uint32_t shard) const { return placement[shard * width]; }
  const ShardNode& Owner(std::uint32_t shard) const { return nodes[OwnerIndex(shard)]; }
  // Owner first, then the replicas in preference order.
  std::span<const std::uint32_t> Placement(std::uint32_t shard) const {
    return {placement.data() + static_cast<std::size_t>(shard) * width, width};
  }
  // The node index of `id`, if it is in the map.
  std::optional<std::uint32_t> IndexOf(std::string_view id) const;
  // Makes `to` the owner of `shard` by swapping it with the current owner in
  // the shard's placement (so the old owner becomes a replica) and records
  // the move (replacing an earlier move of the shard). FAILED_PRECONDITION if
  // `to` is not a replica of the shard.
  core::Status Move(std::uint32_t shard, std::string_view to, std::string reason, std::string at);
  // The recorded move of `shard`, if any.
  const ShardMove* MoveOf(std::uint32_t shard) const;
  // Same strategy inputs: the members and the spec (not version/stamps).
  bool SameInputs(const ShardSpec& other_spec, const std::vector<ShardNode>& other_nodes) const;

  nlohmann::json ToJson() const;
  // INVALID_ARGUMENT for a malformed document (indices out of range, ...).
  static core::StatusOr<ShardMap> FromJson(const nlohmann::json& json);
};

}  // namespace omnirelay::shards
