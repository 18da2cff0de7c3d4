// The shard route's per-call decision at 4,096 shards x 1,000 nodes: key ->
// shard -> target (the geo stickiness rule) -> the pool chooser's pick of
// that peer (id lookup in the snapshot's table), with and without the geo
// chooser's evaluation. `allocs/op` counts global operator new calls.
//
//   build/release/cpp/omnirelay/shards/shards_route_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "omnirelay/core/alloc_counter.h"
#include "omnirelay/peers/coordinator.h"
#include "omnirelay/shards/route_test_util.h"
#include "omnirelay/shards/shard_chooser.h"
#include "omnirelay/shards/strategy.h"

OMNIRELAY_COUNT_ALLOCATIONS();

namespace omnirelay::shards {
namespace {

void BM_RouteTargetAndPick(benchmark::State& state) {
  const bool with_geo = state.range(0) != 0;
  auto clock = std::make_shared<core::ManualClock>();
  std::vector<ShardNode> members;
  for (int i = 0; i < 1000; ++i) {
    members.push_back({"node-" + std::to_string(i), "10.0.0.1:7000", i % 3 ? "east" : "west", ""});
  }
  ShardSpec spec;
  spec.ns = "users";
  spec.shard_count = 4096;
  spec.replicas = 2;
  const ShardMap map = *ComputeShardMap(spec, members);
  std::shared_ptr<peers::GeoChooser> geo;
  if (with_geo) {
    peers::GeoChooserOptions options;
    options.region = "west";
    geo = *peers::GeoChooser::Create(options, clock, nullptr);
  }
  peers::PeerListCoordinatorOptions options;
  options.chooser_factory = [geo] { return std::make_unique<ShardTargetChooser>(geo); };
  auto coordinator = *peers::PeerListCoordinator::Create(options, clock, nullptr);
  (void)coordinator->ReplacePeers(testing::AvailablePeersOf(members));
  auto snapshot = coordinator->snapshot();
  std::vector<std::string> keys;
  std::vector<core::RequestMeta> metas(1024);
  for (std::size_t i = 0; i < metas.size(); ++i) {
    keys.push_back("tenant-" + std::to_string(i * 7919));
    const auto shard = map.ShardOf(keys[i]);
    auto target = ChooseShardTarget(map, shard, "self", with_geo ? "west" : "", true,
                                    [](std::string_view) { return true; });
    metas[i].headers.Set(kShardTargetHeader, target.node->id);
  }
  auto routable = [](std::string_view) { return true; };
  std::size_t i = 0;
  const std::uint64_t before = core::testing::thread_allocations;
  for (auto _ : state) {
    const std::size_t k = i++ & (metas.size() - 1);
    const auto target = ChooseShardTarget(map, map.ShardOf(keys[k]), "self", with_geo ? "west" : "",
                                          true, routable);
    benchmark::DoNotOptimize(target.node);
    benchmark::DoNotOptimize(coordinator->chooser().Pick(*snapshot, metas[k]));
  }
  state.counters["allocs/op"] =
      benchmark::Counter(static_cast<double>(core::testing::thread_allocations - before) /
                         static_cast<double>(state.iterations()));
}
BENCHMARK(BM_RouteTargetAndPick)->Arg(0)->Arg(1)->ArgNames({"geo"});

}  // namespace
}  // namespace omnirelay::shards
