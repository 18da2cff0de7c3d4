// Proves the shard lookup + owner pick allocates nothing: this binary
// replaces the global operator new with a per-thread counter (as
// peers/alloc_test.cc does). Its own binary, so the counter touches no other test.
#include <gtest/gtest.h>

#include "omnirelay/core/alloc_counter.h"
#include "omnirelay/shards/strategy.h"

OMNIRELAY_COUNT_ALLOCATIONS();

namespace omnirelay::shards {
namespace {

TEST(ShardLookupAllocationTest, LookupAndOwnerPickAllocateNothing) {
  std::vector<ShardNode> members;
  for (int i = 0; i < 200; ++i) members.push_back({"n" + std::to_string(i), "a", "r", "z"});
  for (Strategy strategy : {Strategy::kRing, Strategy::kRendezvous, Strategy::kLocality}) {
    ShardSpec spec;
    spec.ns = "users";
    spec.shard_count = 4096;
    spec.replicas = 2;
    spec.strategy = strategy;
    const ShardMap map = *ComputeShardMap(spec, members);
    std::vector<std::string> keys;
    for (int i = 0; i < 512; ++i) keys.push_back("key-with-a-longer-body-" + std::to_string(i));
    std::size_t sum = 0;
    const std::uint64_t before = core::testing::thread_allocations;
    for (int i = 0; i < 100000; ++i) {
      const std::uint32_t shard = map.ShardOf(keys[i % keys.size()]);
      sum += map.Owner(shard).id.size() + map.Placement(shard).size();
    }
    EXPECT_EQ(core::testing::thread_allocations - before, 0u) << StrategyName(strategy);
    EXPECT_GT(sum, 0u);
  }
}

}  // namespace
}  // namespace omnirelay::shards
