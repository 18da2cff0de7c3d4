// Placement strategies: determinism, evenness, movement bounds on membership
// changes, replicas, locality tiers, key hashing and the map's JSON form.
#include "omnirelay/shards/strategy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

namespace omnirelay::shards {
namespace {

std::vector<ShardNode> Members(int n, std::string_view prefix = "node-") {
  std::vector<ShardNode> out;
  for (int i = 0; i < n; ++i) {
    out.push_back({std::string(prefix) + std::to_string(i), "127.0.0.1:" + std::to_string(7000 + i),
                   i % 2 ? "west" : "east", i % 4 < 2 ? "a" : "b"});
  }
  return out;
}

ShardSpec Spec(Strategy strategy, std::uint32_t shards = 4096, std::uint32_t replicas = 2) {
  ShardSpec spec;
  spec.ns = "users";
  spec.shard_count = shards;
  spec.replicas = replicas;
  spec.strategy = strategy;
  return spec;
}

ShardMap Compute(const ShardSpec& spec, std::vector<ShardNode> members) {
  auto map = ComputeShardMap(spec, std::move(members));
  EXPECT_TRUE(map.ok()) << map.status();
  return *map;
}

class StrategyTest : public ::testing::TestWithParam<Strategy> {};

TEST_P(StrategyTest, SameMembersInAnyOrderGiveTheSamePlacement) {
  auto members = Members(37);
  const ShardMap a = Compute(Spec(GetParam()), members);
  std::mt19937 rng(7);
  for (int round = 0; round < 3; ++round) {
    std::shuffle(members.begin(), members.end(), rng);
    const ShardMap b = Compute(Spec(GetParam()), members);
    EXPECT_EQ(a.placement, b.placement);
    EXPECT_EQ(a.nodes, b.nodes);
  }
}

TEST_P(StrategyTest, OwnerAndReplicasAreDistinctMembers) {
  const ShardMap map = Compute(Spec(GetParam(), 512, 2), Members(9));
  ASSERT_EQ(map.width, 3u);
  for (std::uint32_t s = 0; s < map.shard_count(); ++s) {
    auto p = map.Placement(s);
    std::set<std::uint32_t> distinct(p.begin(), p.end());
    EXPECT_EQ(distinct.size(), 3u) << "shard " << s;
  }
  // Fewer members than 1 + replicas: every member, once.
  const ShardMap small = Compute(Spec(GetParam(), 64, 5), Members(3));
  EXPECT_EQ(small.width, 3u);
  const ShardMap single = Compute(Spec(GetParam(), 64, 2), Members(1));
  EXPECT_EQ(single.width, 1u);
  EXPECT_EQ(single.Owner(17).id, "node-0");
}

// Every member owns close to its share of the shards.
TEST_P(StrategyTest, OwnershipIsEven) {
  const int n = 16;
  const ShardMap map = Compute(Spec(GetParam(), 4096, 0), Members(n));
  std::map<std::string, int> owned;
  for (std::uint32_t s = 0; s < map.shard_count(); ++s) ++owned[map.Owner(s).id];
  ASSERT_EQ(owned.size(), static_cast<std::size_t>(n));
  const double mean = 4096.0 / n;
  int lo = 1 << 30, hi = 0;
  for (const auto& [id, count] : owned) {
    lo = std::min(lo, count);
    hi = std::max(hi, count);
  }
  // Rendezvous is binomial (sd ~ 15.5 here); the ring with 128 virtual nodes
  // has a wider spread (arc lengths), so its bound is looser.
  const double bound = GetParam() == Strategy::kRing ? 0.30 : 0.20;
  EXPECT_LE(hi, mean * (1 + bound)) << "max " << hi << " mean " << mean;
  EXPECT_GE(lo, mean * (1 - bound)) << "min " << lo << " mean " << mean;
}

INSTANTIATE_TEST_SUITE_P(All, StrategyTest,
                         ::testing::Values(Strategy::kRing, Strategy::kRendezvous,
                                           Strategy::kLocality),
                         [](const auto& info) { return std::string(StrategyName(info.param)); });

class MovementTest : public ::testing::TestWithParam<Strategy> {};

// Adding a member moves only the shards it wins, about 1/(n+1) of them.
TEST_P(MovementTest, AddingAMemberMovesAboutOneNth) {
  for (int n : {4, 10, 50}) {
    auto members = Members(n);
    const ShardMap before = Compute(Spec(GetParam()), members);
    members.push_back({"newcomer", "127.0.0.1:9999", "east", "a"});
    const ShardMap after = Compute(Spec(GetParam()), members);
    for (std::uint32_t s = 0; s < before.shard_count(); ++s) {
      if (before.Owner(s).id != after.Owner(s).id) {
        ASSERT_EQ(after.Owner(s).id, "newcomer") << "shard " << s << " moved between old members";
      }
    }
    const double moved = OwnerMovement(before, after);
    const double ideal = 1.0 / (n + 1);
    EXPECT_GT(moved, ideal * 0.5) << "n=" << n;
    EXPECT_LE(moved, ideal * 1.5) << "n=" << n;
  }
}

// Removing a member moves exactly the shards it owned, about 1/n.
TEST_P(MovementTest, RemovingAMemberMovesOnlyItsShards) {
  for (int n : {5, 11, 51}) {
    auto members = Members(n);
    const ShardMap before = Compute(Spec(GetParam()), members);
    const std::string gone = members[3].id;
    members.erase(members.begin() + 3);
    const ShardMap after = Compute(Spec(GetParam()), members);
    std::uint32_t owned_by_gone = 0;
    for (std::uint32_t s = 0; s < before.shard_count(); ++s) {
      if (before.Owner(s).id == gone) {
        ++owned_by_gone;
        EXPECT_NE(after.Owner(s).id, gone);
      } else {
        ASSERT_EQ(before.Owner(s).id, after.Owner(s).id) << "shard " << s;
      }
    }
    const double moved = OwnerMovement(before, after);
    EXPECT_DOUBLE_EQ(moved, static_cast<double>(owned_by_gone) / before.shard_count());
    EXPECT_LE(moved, 1.5 / n) << "n=" << n;
  }
}

// A shard whose owner leaves is taken over by its first replica (both
// strategies keep the preference order), so the replica already holds it.
TEST_P(MovementTest, FirstReplicaTakesOverFromALostOwner) {
  auto members = Members(12);
  const ShardMap before = Compute(Spec(GetParam(), 1024, 2), members);
  const std::string gone = members[5].id;
  members.erase(members.begin() + 5);
  const ShardMap after = Compute(Spec(GetParam(), 1024, 2), members);
  for (std::uint32_t s = 0; s < before.shard_count(); ++s) {
    if (before.Owner(s).id != gone) continue;
    EXPECT_EQ(after.Owner(s).id, before.nodes[before.Placement(s)[1]].id) << "shard " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(RingAndRendezvous, MovementTest,
                         ::testing::Values(Strategy::kRing, Strategy::kRendezvous),
                         [](const auto& info) { return std::string(StrategyName(info.param)); });

TEST(LocalityTest, OwnersAndReplicasPreferTheZoneThenTheRegion) {
  // Members(8): east = even ids, zone a = i%4 < 2 -> east/a: node-0, node-4;
  // east/b: node-2, node-6; west: odd.
  ShardSpec spec = Spec(Strategy::kLocality, 1024, 3);
  spec.region = "east";
  spec.zone = "a";
  const ShardMap map = Compute(spec, Members(8));
  std::set<std::string> owners;
  for (std::uint32_t s = 0; s < map.shard_count(); ++s) {
    auto p = map.Placement(s);
    owners.insert(map.nodes[p[0]].id);
    // owner + first replica: zone east/a (two members there)
    EXPECT_EQ(map.nodes[p[0]].zone, "a");
    EXPECT_EQ(map.nodes[p[1]].zone, "a");
    EXPECT_EQ(map.nodes[p[1]].region, "east");
    // then the rest of the region before any other region
    EXPECT_EQ(map.nodes[p[2]].region, "east");
    EXPECT_EQ(map.nodes[p[2]].zone, "b");
    EXPECT_EQ(map.nodes[p[3]].region, "east");
  }
  EXPECT_EQ(owners, (std::set<std::string>{"node-0", "node-4"}));
  // Without members in the preferred region, placement falls back everywhere.
  spec.region = "north";
  const ShardMap fallback = Compute(spec, Members(8));
  std::set<std::string> all_owners;
  for (std::uint32_t s = 0; s < fallback.shard_count(); ++s) {
    all_owners.insert(fallback.Owner(s).id);
  }
  EXPECT_EQ(all_owners.size(), 8u);
}

TEST(KeyHashTest, KeysSpreadEvenlyAndTheHashIsStable) {
  // The hash is a wire contract: these values must never change (every node,
  // every build and the Python side must agree on key -> shard).
  EXPECT_EQ(StableHash(""), Mix64(0xcbf29ce484222325ULL));
  EXPECT_EQ(ShardOfKey("user-42", 4096), ShardOfKey(std::string("user-") + "42", 4096));
  static_assert(ShardOfKey("user-42", 1) == 0);
  std::vector<int> counts(64, 0);
  for (int i = 0; i < 64000; ++i) ++counts[ShardOfKey("key-" + std::to_string(i), 64)];
  for (int c : counts) {
    EXPECT_GT(c, 1000 * 0.85);
    EXPECT_LT(c, 1000 * 1.15);
  }
}

TEST(ShardMapTest, JsonRoundTripAndValidation) {
  ShardMap map = Compute(Spec(Strategy::kRing, 128, 1), Members(5));
  map.version = 7;
  map.written_by = "node-1";
  map.fencing_token = 42;
  auto back = ShardMap::FromJson(map.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->placement, map.placement);
  EXPECT_EQ(back->nodes, map.nodes);
  EXPECT_EQ(back->spec, map.spec);
  EXPECT_EQ(back->version, 7);
  EXPECT_EQ(back->fencing_token, 42);
  EXPECT_EQ(back->Owner(99).id, map.Owner(99).id);

  auto json = map.ToJson();
  json["shards"][3][0] = 99;  // no such node
  EXPECT_EQ(ShardMap::FromJson(json).status().code(), absl::StatusCode::kInvalidArgument);
  json = map.ToJson();
  json["shards"].erase(0);
  EXPECT_EQ(ShardMap::FromJson(json).status().code(), absl::StatusCode::kInvalidArgument);

  ShardSpec bad = Spec(Strategy::kRing, 0);
  auto status = ComputeShardMap(bad, Members(3)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("shardCount"), std::string::npos);
  bad = Spec(Strategy::kRing);
  bad.virtual_nodes = 0;
  EXPECT_NE(ComputeShardMap(bad, Members(3)).status().message().find("virtualNodes"),
            std::string::npos);
  EXPECT_EQ(ComputeShardMap(Spec(Strategy::kRing), {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto dup = Members(3);
  dup.push_back(dup[0]);
  EXPECT_EQ(ComputeShardMap(Spec(Strategy::kRendezvous), dup).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseStrategy("consistent-hash"), Strategy::kRing);
  EXPECT_EQ(ParseStrategy("hrw"), Strategy::kRendezvous);
  EXPECT_FALSE(ParseStrategy("random").has_value());
}

}  // namespace
}  // namespace omnirelay::shards
