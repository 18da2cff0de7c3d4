// Shard lookup + owner pick at 4,096 shards x 1,000 nodes (target <= 100 ns,
// no allocation: `allocs/op` counts global operator new calls), the cost of
// computing a map per strategy, and the key movement of a membership change
// (printed as counters: moved share vs the ideal 1/n).
//
//   build/release/cpp/omnirelay/shards/shards_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "omnirelay/core/alloc_counter.h"
#include "omnirelay/shards/strategy.h"

OMNIRELAY_COUNT_ALLOCATIONS();

namespace omnirelay::shards {
namespace {

std::vector<ShardNode> Members(int n) {
  std::vector<ShardNode> out;
  for (int i = 0; i < n; ++i) {
    out.push_back({"node-" + std::to_string(i),
                   "10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ":7000",
                   i % 3 == 0 ? "west" : "east", "z" + std::to_string(i % 4)});
  }
  return out;
}

ShardSpec Spec(Strategy strategy) {
  ShardSpec spec;
  spec.ns = "users";
  spec.shard_count = 4096;
  spec.replicas = 2;
  spec.strategy = strategy;
  return spec;
}

void BM_LookupOwner(benchmark::State& state) {
  const auto strategy = static_cast<Strategy>(state.range(0));
  const ShardMap map = *ComputeShardMap(Spec(strategy), Members(1000));
  std::vector<std::string> keys;
  for (int i = 0; i < 4096; ++i) keys.push_back("tenant-" + std::to_string(i * 7919) + "/user");
  std::size_t i = 0;
  const std::uint64_t before = core::testing::thread_allocations;
  for (auto _ : state) {
    const std::string_view key = keys[i++ & 4095];
    const std::uint32_t shard = map.ShardOf(key);
    const ShardNode& owner = map.Owner(shard);
    benchmark::DoNotOptimize(owner.address.data());
  }
  state.counters["allocs/op"] =
      benchmark::Counter(static_cast<double>(core::testing::thread_allocations - before),
                         benchmark::Counter::kAvgIterations);
  state.SetLabel(std::string(StrategyName(strategy)) + " 4096 shards x 1000 nodes");
}
BENCHMARK(BM_LookupOwner)
    ->Arg(static_cast<int>(Strategy::kRing))
    ->Arg(static_cast<int>(Strategy::kRendezvous));

void BM_ComputeMap(benchmark::State& state) {
  const auto strategy = static_cast<Strategy>(state.range(0));
  const auto members = Members(static_cast<int>(state.range(1)));
  for (auto _ : state) {
    auto map = ComputeShardMap(Spec(strategy), members);
    benchmark::DoNotOptimize(map->placement.data());
  }
  state.SetLabel(std::string(StrategyName(strategy)) + " 4096 shards");
  state.counters["nodes"] = static_cast<double>(state.range(1));
}
BENCHMARK(BM_ComputeMap)
    ->Args({static_cast<int>(Strategy::kRing), 1000})
    ->Args({static_cast<int>(Strategy::kRendezvous), 1000})
    ->Args({static_cast<int>(Strategy::kLocality), 1000})
    ->Unit(benchmark::kMillisecond);

// Key movement (not a speed figure): the share of 100,000 keys whose owner
// changes when one member joins or one leaves a cluster of n.
void BM_KeyMovement(benchmark::State& state) {
  const auto strategy = static_cast<Strategy>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  double join = 0, leave = 0;
  for (auto _ : state) {
    auto members = Members(n);
    const ShardMap base = *ComputeShardMap(Spec(strategy), members);
    auto grown = members;
    grown.push_back({"newcomer", "10.9.9.9:7000", "east", "z0"});
    const ShardMap joined = *ComputeShardMap(Spec(strategy), grown);
    members.erase(members.begin() + n / 2);
    const ShardMap left = *ComputeShardMap(Spec(strategy), members);
    int moved_join = 0, moved_leave = 0;
    constexpr int kKeys = 100000;
    for (int k = 0; k < kKeys; ++k) {
      const std::string key = "key-" + std::to_string(k);
      const std::uint32_t s = base.ShardOf(key);
      moved_join += base.Owner(s).id != joined.Owner(s).id;
      moved_leave += base.Owner(s).id != left.Owner(s).id;
    }
    join = static_cast<double>(moved_join) / kKeys;
    leave = static_cast<double>(moved_leave) / kKeys;
  }
  state.counters["join_moved"] = join;
  state.counters["join_ideal"] = 1.0 / (n + 1);
  state.counters["leave_moved"] = leave;
  state.counters["leave_ideal"] = 1.0 / n;
  state.SetLabel(std::string(StrategyName(strategy)) + " n=" + std::to_string(n));
}
BENCHMARK(BM_KeyMovement)
    ->Args({static_cast<int>(Strategy::kRing), 10})
    ->Args({static_cast<int>(Strategy::kRendezvous), 10})
    ->Args({static_cast<int>(Strategy::kRing), 100})
    ->Args({static_cast<int>(Strategy::kRendezvous), 100})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace omnirelay::shards
