// Proves the shard route's per-call decision allocates nothing: the geo
// stickiness rule over a 1,000-node map and the pool chooser's pick of the
// peer named in rpc-shard-target (id lookup, geo evaluation included). This
// binary replaces the global operator new with a per-thread counter (as
// alloc_test.cc does); its own binary, so the counter touches no other test.
#include <gtest/gtest.h>

#include "omnirelay/core/alloc_counter.h"
#include "omnirelay/peers/coordinator.h"
#include "omnirelay/shards/route_test_util.h"
#include "omnirelay/shards/shard_chooser.h"
#include "omnirelay/shards/strategy.h"

OMNIRELAY_COUNT_ALLOCATIONS();

namespace omnirelay::shards {
namespace {

using namespace std::chrono_literals;

TEST(ShardRouteAllocationTest, TargetChoiceAndPeerPickAllocateNothing) {
  auto clock = std::make_shared<core::ManualClock>();
  std::vector<ShardNode> members;
  for (int i = 0; i < 1000; ++i) {
    members.push_back(
        {"node-with-a-long-identifier-" + std::to_string(i), "a:1", i % 2 ? "east" : "west", ""});
  }
  ShardSpec spec;
  spec.ns = "users";
  spec.shard_count = 4096;
  spec.replicas = 2;
  const ShardMap map = *ComputeShardMap(spec, members);

  peers::GeoChooserOptions geo_options;
  geo_options.region = "west";
  geo_options.evaluate_every = 1ms;
  std::shared_ptr<peers::GeoChooser> geo = *peers::GeoChooser::Create(geo_options, clock, nullptr);
  peers::PeerListCoordinatorOptions options;
  options.chooser_factory = [geo] { return std::make_unique<ShardTargetChooser>(geo); };
  auto coordinator = *peers::PeerListCoordinator::Create(options, clock, nullptr);
  ASSERT_TRUE(coordinator->ReplacePeers(testing::AvailablePeersOf(members)).ok());
  auto snapshot = coordinator->snapshot();

  std::vector<core::RequestMeta> metas(64);
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < metas.size(); ++i) {
    keys.push_back("key-with-a-longer-body-" + std::to_string(i));
    const auto shard = map.ShardOf(keys[i]);
    metas[i].headers.Set(kShardTargetHeader, map.Owner(shard).id);
  }
  auto routable = [](std::string_view) { return true; };
  std::size_t sum = 0;
  const std::uint64_t before = core::testing::thread_allocations;
  for (int i = 0; i < 20000; ++i) {
    const std::size_t k = static_cast<std::size_t>(i) % keys.size();
    if (i % 100 == 0) clock->Advance(2ms);  // evaluations run inside the window
    const auto target =
        ChooseShardTarget(map, map.ShardOf(keys[k]), "self", "west", i % 3 != 0, routable);
    sum += target.node->id.size();
    sum += static_cast<std::size_t>(coordinator->chooser().Pick(*snapshot, metas[k]) + 1);
  }
  EXPECT_EQ(core::testing::thread_allocations - before, 0u);
  EXPECT_GT(sum, 0u);
}

}  // namespace
}  // namespace omnirelay::shards
