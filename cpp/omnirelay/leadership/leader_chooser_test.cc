#include <gtest/gtest.h>

#include "omnirelay/coord/memory_backend.h"
#include "omnirelay/leadership/manager.h"
#include "omnirelay/peers/coordinator.h"

namespace omnirelay::leadership {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<peers::PeerListCoordinator> Peers(std::shared_ptr<core::Clock> clock,
                                                  std::vector<std::string> ids) {
  peers::PeerListCoordinatorOptions options;
  options.service = "svc";
  options.transport = "grpc";
  options.chooser = "round-robin";
  auto coordinator =
      peers::PeerListCoordinator::Create(options, clock, std::make_shared<core::MetricsRegistry>());
  EXPECT_TRUE(coordinator.ok());
  for (const auto& id : ids) {
    peers::PeerDescriptor d;
    d.id = id;
    d.endpoint = "grpc://" + id + ":1";
    EXPECT_TRUE((*coordinator)->AddPeer(d).ok());
  }
  return *std::move(coordinator);
}

TEST(LeaderChooser, FollowsTheDirectoryAndNeverFallsBackToANonLeader) {
  auto clock = std::make_shared<core::ManualClock>();
  auto directory = std::make_shared<LeaderDirectory>();
  auto coordinator = Peers(clock, {"a", "b", "c"});
  auto snapshot = coordinator->snapshot();
  LeaderChooser chooser(directory, "global");
  core::RequestMeta meta;
  EXPECT_EQ(chooser.Pick(*snapshot, meta), -1) << "no leader yet";
  std::vector<int> order;
  chooser.ProbeOrder(*snapshot, meta, -1, &order);
  EXPECT_TRUE(order.empty());
  directory->Set("global", LeaderInfo{"b", 7});
  const int b = chooser.Pick(*snapshot, meta);
  ASSERT_GE(b, 0);
  EXPECT_EQ(snapshot->raw[static_cast<size_t>(b)]->id(), "b");
  EXPECT_EQ(chooser.Pick(*snapshot, meta), b) << "cached";
  directory->Set("global", LeaderInfo{"c", 9});
  const int c = chooser.Pick(*snapshot, meta);
  ASSERT_GE(c, 0);
  EXPECT_EQ(snapshot->raw[static_cast<size_t>(c)]->id(), "c");
  chooser.ProbeOrder(*snapshot, meta, c, &order);
  EXPECT_EQ(order, std::vector<int>{c});
  directory->Set("global", LeaderInfo{"unknown-node", 10});
  EXPECT_EQ(chooser.Pick(*snapshot, meta), -1);
}

TEST(LeaderChooser, FedByTheObserveStreamFollowsAFailover) {
  auto clock = std::make_shared<core::ManualClock>();
  auto backend = coord::MemoryBackend::Create(clock);
  auto make = [&](std::string id, int priority) {
    auto options = LeadershipOptions::Fast();
    options.node_id = std::move(id);
    options.candidacies = {{"global", priority}};
    auto node = LeadershipManager::Create(
        options, std::make_shared<coord::LeadershipStore>(backend, clock), clock);
    EXPECT_TRUE(node->Start().ok());
    return node;
  };
  auto a = make("a", 0);
  auto b = make("b", 1);
  auto coordinator = Peers(clock, {"a", "b"});
  auto snapshot = coordinator->snapshot();
  LeaderChooser chooser(b->directory(), "global");  // b's view routes
  core::RequestMeta meta;
  int picked = chooser.Pick(*snapshot, meta);
  ASSERT_GE(picked, 0);
  EXPECT_EQ(snapshot->raw[static_cast<size_t>(picked)]->id(), "a");
  a->Freeze();
  for (int tick = 0; tick < 220; ++tick) clock->Advance(10ms);
  picked = chooser.Pick(*snapshot, meta);
  ASSERT_GE(picked, 0);
  EXPECT_EQ(snapshot->raw[static_cast<size_t>(picked)]->id(), "b");
}

}  // namespace
}  // namespace omnirelay::leadership
