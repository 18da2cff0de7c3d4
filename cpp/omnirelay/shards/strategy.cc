#include "omnirelay/shards/strategy.h"

#include <algorithm>
#include <set>

namespace omnirelay::shards {
namespace {

// A shard's identity on the ring / in the scores: independent of members.
std::uint64_t ShardPoint(std::uint64_t ns_hash, std::uint32_t shard) {
  return HashCombine(ns_hash, shard);
}

void PlaceRing(const ShardSpec& spec, const std::vector<ShardNode>& nodes, std::uint32_t width,
               std::vector<std::uint32_t>& placement) {
  struct Point {
    std::uint64_t at;
    std::uint32_t node;
  };
  std::vector<Point> ring;
  ring.reserve(nodes.size() * spec.virtual_nodes);
  for (std::uint32_t n = 0; n < nodes.size(); ++n) {
    const std::uint64_t h = StableHash(nodes[n].id);
    for (std::uint32_t v = 0; v < spec.virtual_nodes; ++v) ring.push_back({HashCombine(h, v), n});
  }
  // Ties (astronomically rare) break by node index = id order: deterministic.
  std::sort(ring.begin(), ring.end(), [](const Point& a, const Point& b) {
    return a.at != b.at ? a.at < b.at : a.node < b.node;
  });
  const std::uint64_t ns_hash = StableHash(spec.ns);
  std::vector<char> taken(nodes.size(), 0);
  for (std::uint32_t s = 0; s < spec.shard_count; ++s) {
    const std::uint64_t point = ShardPoint(ns_hash, s);
    auto it = std::lower_bound(ring.begin(), ring.end(), point,
                               [](const Point& p, std::uint64_t v) { return p.at < v; });
    std::size_t i = static_cast<std::size_t>(it - ring.begin());
    std::uint32_t placed = 0;
    for (std::size_t walked = 0; placed < width && walked < ring.size(); ++walked, ++i) {
      const std::uint32_t node = ring[i % ring.size()].node;
      if (taken[node]) continue;
      taken[node] = 1;
      placement.push_back(node);
      ++placed;
    }
    for (std::uint32_t k = 0; k < placed; ++k) {
      taken[placement[placement.size() - 1 - k]] = 0;
    }
  }
}

// Rendezvous and locality: rank members per shard by (tier, score desc, id).
void PlaceRanked(const ShardSpec& spec, const std::vector<ShardNode>& nodes, std::uint32_t width,
                 bool locality, std::vector<std::uint32_t>& placement) {
  std::vector<std::uint64_t> node_hash(nodes.size());
  std::vector<std::uint8_t> tier(nodes.size(), 0);
  for (std::size_t n = 0; n < nodes.size(); ++n) {
    node_hash[n] = StableHash(nodes[n].id);
    if (locality) {
      const bool same_region = spec.region.empty() || nodes[n].region == spec.region;
      const bool same_zone = same_region && (spec.zone.empty() || nodes[n].zone == spec.zone);
      tier[n] = same_zone ? 0 : same_region ? 1 : 2;
    }
  }
  const std::uint64_t ns_hash = StableHash(spec.ns);
  struct Ranked {
    std::uint8_t tier;
    std::uint64_t score;
    std::uint32_t node;
  };
  auto better = [](const Ranked& a, const Ranked& b) {
    if (a.tier != b.tier) return a.tier < b.tier;
    if (a.score != b.score) return a.score > b.score;
    return a.node < b.node;
  };
  std::vector<Ranked> top;  // the best `width` so far, kept sorted
  top.reserve(width + 1);
  for (std::uint32_t s = 0; s < spec.shard_count; ++s) {
    const std::uint64_t shard_hash = ShardPoint(ns_hash, s);
    top.clear();
    for (std::uint32_t n = 0; n < nodes.size(); ++n) {
      const Ranked r{tier[n], Mix64(node_hash[n] ^ shard_hash), n};
      if (top.size() == width && !better(r, top.back())) continue;
      top.insert(std::upper_bound(top.begin(), top.end(), r, better), r);
      if (top.size() > width) top.pop_back();
    }
    for (const auto& r : top) placement.push_back(r.node);
  }
}

}  // namespace

core::StatusOr<ShardMap> ComputeShardMap(const ShardSpec& spec, std::vector<ShardNode> members) {
  if (auto s = spec.Validate(); !s.ok()) return s;
  if (members.empty()) {
    return core::MakeStatus(core::StatusCode::kFailedPrecondition,
                            "namespace '" + spec.ns + "' has no members to own shards",
                            "no-shard-members");
  }
  std::sort(members.begin(), members.end(),
            [](const ShardNode& a, const ShardNode& b) { return a.id < b.id; });
  for (std::size_t i = 0; i < members.size(); ++i) {
    if (members[i].id.empty()) return absl::InvalidArgumentError("a member has an empty id");
    if (i > 0 && members[i].id == members[i - 1].id) {
      return absl::InvalidArgumentError("member '" + members[i].id + "' is listed twice");
    }
  }
  ShardMap map;
  map.spec = spec;
  map.nodes = std::move(members);
  map.width =
      1 + std::min<std::uint32_t>(spec.replicas, static_cast<std::uint32_t>(map.nodes.size()) - 1);
  map.placement.reserve(static_cast<std::size_t>(spec.shard_count) * map.width);
  switch (spec.strategy) {
    case Strategy::kRing:
      PlaceRing(spec, map.nodes, map.width, map.placement);
      break;
    case Strategy::kRendezvous:
      PlaceRanked(spec, map.nodes, map.width, /*locality=*/false, map.placement);
      break;
    case Strategy::kLocality:
      PlaceRanked(spec, map.nodes, map.width, /*locality=*/true, map.placement);
      break;
  }
  return map;
}

double OwnerMovement(const ShardMap& before, const ShardMap& after) {
  const std::uint32_t n = std::min(before.shard_count(), after.shard_count());
  if (n == 0) return 0;
  std::uint32_t moved = 0;
  for (std::uint32_t s = 0; s < n; ++s) {
    if (before.Owner(s).id != after.Owner(s).id) ++moved;
  }
  return static_cast<double>(moved) / n;
}

}  // namespace omnirelay::shards
