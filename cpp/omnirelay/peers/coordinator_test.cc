// The PeerListCoordinator rules, each with a ManualClock.
#include "omnirelay/peers/coordinator.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;
using testing::Desc;
using testing::Eventually;
using testing::Fixture;

double Rejected(const Fixture& f, const char* reason) {
  return f.Total("omnirelay.peer.lease_rejected", {{"peer.rejection_reason", reason}});
}

std::vector<PeerLease> Saturate(PeerListCoordinator& coordinator, int n) {
  std::vector<PeerLease> held;
  for (int i = 0; i < n; ++i) {
    auto lease = coordinator.Acquire({});
    EXPECT_TRUE(lease.ok()) << lease.status();
    held.push_back(*std::move(lease));
  }
  return held;
}

TEST(CoordinatorTest, NoPeersIsUnavailable) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 0);
  auto lease = coordinator->Acquire({});
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(core::ErrorCode(lease.status()), "peer-list-empty");
}

TEST(CoordinatorTest, UnknownChooserFailsCreate) {
  Fixture f;
  PeerListCoordinatorOptions options;
  options.chooser = "nope";
  EXPECT_EQ(PeerListCoordinator::Create(options, f.clock, f.metrics).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CoordinatorTest, BusyWithoutDeadlineIsResourceExhaustedAfterProbingEveryPeer) {
  for (const char* chooser :
       {"fewest-pending", "round-robin", "two-random", "hash", "preferred", "least-latency"}) {
    Fixture f;
    auto coordinator = f.Make(chooser, 3, /*cap=*/1);
    auto held = Saturate(*coordinator, 3);
    auto lease = coordinator->Acquire({});
    EXPECT_EQ(lease.status().code(), absl::StatusCode::kResourceExhausted) << chooser;
    EXPECT_EQ(core::ErrorCode(lease.status()), "peer-pool-exhausted");
    EXPECT_EQ(Rejected(f, "busy"), 3) << chooser;  // every peer probed, once
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(f.Total("omnirelay.peer.lease_rejected",
                        {{"rpc.peer", "p" + std::to_string(i)}, {"peer.rejection_reason", "busy"}}),
                1)
          << chooser;
    }
    EXPECT_EQ(f.Total("omnirelay.peer.pool_exhausted"), 1) << chooser;
  }
}

TEST(CoordinatorTest, NoDeadlineNeverEndsInDeadlineExceeded) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 3, 1);
  auto held = Saturate(*coordinator, 3);
  for (int i = 0; i < 100; ++i) {
    f.clock->Advance(1h);  // however much time passes
    auto lease = coordinator->Acquire({});
    ASSERT_EQ(lease.status().code(), absl::StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(f.Total("omnirelay.peer.pool_exhausted"), 100);
  EXPECT_EQ(f.Total("omnirelay.peer.acquire_deadline_exceeded"), 0);
  EXPECT_EQ(coordinator->waiting(), 0);
}

TEST(CoordinatorTest, RejectionReasonsUnhealthyAndCircuitOpen) {
  Fixture f;
  auto coordinator = f.Make("round-robin", 3);
  ASSERT_TRUE(coordinator->SetPeerStatus("p0", PeerStatus::kUnavailable).ok());
  auto p1 = coordinator->FindPeer("p1");
  for (int i = 0; i < 3; ++i) {  // ForTests breaker: 3 failures open it
    ASSERT_TRUE(p1->TryAcquire().ok());
    p1->Release(core::StatusCode::kUnavailable, 1ms);
  }
  ASSERT_EQ(p1->breaker()->state(), BreakerState::kOpen);
  ASSERT_TRUE(coordinator->SetPeerStatus("p2", PeerStatus::kUnavailable).ok());
  auto lease = coordinator->Acquire({});
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Rejected(f, "unhealthy"), 2);
  EXPECT_EQ(Rejected(f, "circuit_open"), 1);
}

TEST(CoordinatorTest, DeadlineAlreadyPastFailsAtOnceWithoutPoolExhausted) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 3, 1);
  core::RequestMeta meta;
  meta.deadline = f.clock->Now();
  auto lease = coordinator->Acquire(meta);  // even with free peers
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kDeadlineExceeded);
  meta.deadline.reset();
  meta.time_to_live = 0ms;
  EXPECT_EQ(coordinator->Acquire(meta).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(f.Total("omnirelay.peer.pool_exhausted"), 0);
  EXPECT_EQ(f.Total("omnirelay.peer.acquire_deadline_exceeded"), 2);
  EXPECT_EQ(Rejected(f, "busy"), 0);
}

TEST(CoordinatorTest, TryAcquireNowLeasesAFreePickAndNeverWaitsOrCountsExhaustion) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 2, /*cap=*/1);
  core::RequestMeta meta;
  meta.deadline = f.clock->Now() + 10s;  // a waiting Acquire would block on the ManualClock
  auto first = coordinator->TryAcquireNow(meta);
  auto second = coordinator->TryAcquireNow(meta);
  ASSERT_TRUE(first && second);
  EXPECT_NE(first->peer()->id(), second->peer()->id());
  EXPECT_FALSE(coordinator->TryAcquireNow(meta));  // both at their cap: no lease, no wait
  EXPECT_EQ(f.Total("omnirelay.peer.pool_exhausted"), 0);
  EXPECT_EQ(f.Total("omnirelay.peer.acquire_deadline_exceeded"), 0);
  EXPECT_EQ(coordinator->waiting(), 0);
  const std::string freed = first->peer()->id();
  first->Release(core::StatusCode::kOk, 1ms);
  auto again = coordinator->TryAcquireNow(meta);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->peer()->id(), freed);
  meta.deadline = f.clock->Now();  // passed: left to Acquire, which counts it
  EXPECT_FALSE(coordinator->TryAcquireNow(meta));
  EXPECT_EQ(f.Total("omnirelay.peer.acquire_deadline_exceeded"), 0);
  second->Release(core::StatusCode::kOk, 1ms);
  again->Release(core::StatusCode::kOk, 1ms);
  EXPECT_FALSE(f.Make("round-robin", 0)->TryAcquireNow({}));  // no peers
}

TEST(CoordinatorTest, WithDeadlineWaitsThenDeadlineExceededWithoutPoolExhausted) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 3, 1);
  auto held = Saturate(*coordinator, 3);
  core::RequestMeta meta;
  meta.time_to_live = 50ms;
  auto result = std::async(std::launch::async, [&] { return coordinator->Acquire(meta); });
  ASSERT_TRUE(Eventually([&] { return coordinator->waiting() == 1; }));
  EXPECT_GE(Rejected(f, "busy"), 3);  // probed every peer before waiting
  f.clock->Advance(49ms);
  EXPECT_EQ(result.wait_for(20ms), std::future_status::timeout);  // still waiting
  f.clock->Advance(1ms);
  auto lease = result.get();
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(core::ErrorCode(lease.status()), "peer-acquire-deadline");
  EXPECT_EQ(f.Total("omnirelay.peer.pool_exhausted"), 0);
  EXPECT_EQ(f.Total("omnirelay.peer.acquire_deadline_exceeded"), 1);
  EXPECT_EQ(coordinator->waiting(), 0);
  EXPECT_EQ(f.clock->pending_timers(), 0u);
}

TEST(CoordinatorTest, EffectiveDeadlineIsTheEarlierOfDeadlineAndTtl) {
  Fixture f;
  auto coordinator = f.Make("round-robin", 1, 1);
  auto held = Saturate(*coordinator, 1);
  core::RequestMeta meta;
  meta.deadline = f.clock->Now() + 10s;
  meta.time_to_live = 30ms;
  auto result = std::async(std::launch::async, [&] { return coordinator->Acquire(meta); });
  ASSERT_TRUE(Eventually([&] { return coordinator->waiting() == 1; }));
  f.clock->Advance(30ms);
  EXPECT_EQ(result.get().status().code(), absl::StatusCode::kDeadlineExceeded);

  meta.deadline = f.clock->Now() + 20ms;  // now the absolute deadline is earlier
  meta.time_to_live = 10s;
  result = std::async(std::launch::async, [&] { return coordinator->Acquire(meta); });
  ASSERT_TRUE(Eventually([&] { return coordinator->waiting() == 1; }));
  f.clock->Advance(20ms);
  EXPECT_EQ(result.get().status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(CoordinatorTest, WaitingRequestServedAsSoonAsAPeerFreesUp) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 3, 1);
  auto held = Saturate(*coordinator, 3);
  core::RequestMeta meta;
  meta.time_to_live = 1s;
  auto result = std::async(std::launch::async, [&] { return coordinator->Acquire(meta); });
  ASSERT_TRUE(Eventually([&] { return coordinator->waiting() == 1; }));
  std::string freed = held[1].peer()->id();
  held[1].Release(core::StatusCode::kOk, 5ms);  // no clock movement at all
  ASSERT_EQ(result.wait_for(5s), std::future_status::ready);
  auto lease = result.get();
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->peer()->id(), freed);
  EXPECT_EQ(f.Total("omnirelay.peer.pool_exhausted"), 0);
  EXPECT_EQ(f.Total("omnirelay.peer.acquire_deadline_exceeded"), 0);
}

TEST(CoordinatorTest, WaitingRequestPicksUpJoiningPeer) {
  Fixture f;
  auto coordinator = f.Make("round-robin", 2, 1);
  auto held = Saturate(*coordinator, 2);
  core::RequestMeta meta;
  meta.time_to_live = 1s;
  auto result = std::async(std::launch::async, [&] { return coordinator->Acquire(meta); });
  ASSERT_TRUE(Eventually([&] { return coordinator->waiting() == 1; }));
  ASSERT_TRUE(coordinator->AddPeer(Desc("newcomer")).ok());
  auto lease = result.get();
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(lease->peer()->id(), "newcomer");
}

TEST(CoordinatorTest, WaitingRequestPicksUpPeerTurningAvailable) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 2);
  ASSERT_TRUE(coordinator->SetPeerStatus("p0", PeerStatus::kUnavailable).ok());
  ASSERT_TRUE(coordinator->SetPeerStatus("p1", PeerStatus::kUnavailable).ok());
  core::RequestMeta meta;
  meta.time_to_live = 1s;
  auto result = std::async(std::launch::async, [&] { return coordinator->Acquire(meta); });
  ASSERT_TRUE(Eventually([&] { return coordinator->waiting() == 1; }));
  ASSERT_TRUE(coordinator->SetPeerStatus("p1", PeerStatus::kAvailable).ok());
  auto lease = result.get();
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(lease->peer()->id(), "p1");
}

TEST(CoordinatorTest, WaitingRequestServedWhenBreakerReadmitsByTimer) {
  Fixture f;
  auto coordinator = f.Make("round-robin", 1);
  auto peer = coordinator->FindPeer("p0");
  for (int i = 0; i < 3; ++i) {
    auto lease = *coordinator->Acquire({});
    lease.Release(core::StatusCode::kInternal, 1ms);
  }
  ASSERT_EQ(peer->breaker()->state(), BreakerState::kOpen);
  core::RequestMeta meta;
  meta.time_to_live = 1s;
  auto result = std::async(std::launch::async, [&] { return coordinator->Acquire(meta); });
  ASSERT_TRUE(Eventually([&] { return coordinator->waiting() == 1; }));
  f.clock->Advance(100ms);  // breaker timer: open -> half-open wakes the waiter
  auto lease = result.get();
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(lease->probe());
  lease->Release(core::StatusCode::kOk, 1ms);
  EXPECT_EQ(peer->breaker()->state(), BreakerState::kClosed);
}

TEST(CoordinatorTest, WaitingRequestSeesRemovalOfEveryPeer) {
  Fixture f;
  auto coordinator = f.Make("round-robin", 1, 1);
  auto held = Saturate(*coordinator, 1);
  core::RequestMeta meta;
  meta.time_to_live = 1s;
  auto result = std::async(std::launch::async, [&] { return coordinator->Acquire(meta); });
  ASSERT_TRUE(Eventually([&] { return coordinator->waiting() == 1; }));
  ASSERT_TRUE(coordinator->RemovePeer("p0").ok());
  EXPECT_EQ(result.get().status().code(), absl::StatusCode::kUnavailable);
  held.clear();  // releasing on a removed peer is fine
}

TEST(CoordinatorTest, LeasingResumesAfterContention) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 3, 2);
  auto held = Saturate(*coordinator, 6);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(coordinator->Acquire({}).status().code(), absl::StatusCode::kResourceExhausted);
  }
  held.clear();  // destroying unreleased leases frees them
  for (const auto& state : coordinator->PeerStates()) EXPECT_EQ(state.inflight, 0);
  auto again = Saturate(*coordinator, 6);
  EXPECT_EQ(again.size(), 6u);
}

TEST(CoordinatorTest, MembershipApi) {
  Fixture f;
  auto coordinator = f.Make("round-robin", 2);
  EXPECT_EQ(coordinator->AddPeer(Desc("p0")).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(coordinator->RemovePeer("zz").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator->SetPeerStatus("zz", PeerStatus::kAvailable).code(),
            absl::StatusCode::kNotFound);
  auto p1 = coordinator->FindPeer("p1");
  ASSERT_TRUE(coordinator->ReplacePeers({Desc("p1"), Desc("p7")}).ok());
  EXPECT_EQ(coordinator->FindPeer("p1"), p1);  // kept, with its state
  EXPECT_EQ(coordinator->FindPeer("p0"), nullptr);
  EXPECT_NE(coordinator->FindPeer("p7"), nullptr);
  EXPECT_EQ(coordinator->snapshot()->raw.size(), 2u);
}

TEST(CoordinatorTest, LeaseOutlivesCoordinator) {
  Fixture f;
  PeerLease lease;
  {
    auto coordinator = f.Make("fewest-pending", 2);
    lease = *coordinator->Acquire({});
  }
  lease.Release(core::StatusCode::kOk, 1ms);
  EXPECT_FALSE(lease);
}

TEST(CoordinatorTest, MetricsCarryRpcTags) {
  Fixture f;
  auto coordinator = f.Make("round-robin", 1);
  auto lease = *coordinator->Acquire({});
  EXPECT_EQ(f.Total("omnirelay.peer.inflight",
                    {{"rpc.service", "svc"}, {"rpc.transport", "grpc"}, {"rpc.peer", "p0"}}),
            1);
  lease.Release(core::StatusCode::kOk, 12ms);
  bool found = false;
  for (const auto& point : f.metrics->Snapshot()) {
    if (point.name == "omnirelay.peer.lease.duration") {
      found = true;
      EXPECT_EQ(point.histogram.count, 1u);
      EXPECT_NEAR(point.histogram.p50, 12, 0.5);
    }
  }
  EXPECT_TRUE(found);
  EXPECT_NE(f.metrics->RenderPrometheus().find("omnirelay_peer_pool_exhausted_total"),
            std::string::npos);
}

}  // namespace
}  // namespace omnirelay::peers
