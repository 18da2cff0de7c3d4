// Proves the shard lookup + owner pick allocates nothing: this binary
// replaces the global operator new with a per-thread counter (as
// peers/alloc_test.cc does). Its own binary, so the counter touches no other test.
#include <gtest/gtest.h>

#include <cstdlib>
#include <new>

#include "omnirelay/shards/strategy.h"

namespace {
thread_local std::uint64_t tls_allocations = 0;
}  // namespace

void* operator new(std::size_t size) {
  ++tls_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

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
    const std::uint64_t before = tls_allocations;
    for (int i = 0; i < 100000; ++i) {
      const std::uint32_t shard = map.ShardOf(keys[i % keys.size()]);
      sum += map.Owner(shard).id.size() + map.Placement(shard).size();
    }
    EXPECT_EQ(tls_allocations - before, 0u) << StrategyName(strategy);
    EXPECT_GT(sum, 0u);
  }
}

}  // namespace
}  // namespace omnirelay::shards
