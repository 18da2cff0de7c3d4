// Many threads acquiring and releasing while membership, status and breaker
// state change underneath. Run under TSan (OMNIRELAY_SANITIZE=thread).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;

class StressTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StressTest, ConcurrentAcquireReleaseAndChurn) {
  auto clock = core::SystemClock::Shared();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  auto tracker = PeerLeaseHealthTracker::Create({.heartbeat_grace = 50ms}, clock, metrics);
  PeerListCoordinatorOptions options;
  options.chooser = GetParam();
  options.chooser_options.seed = 3;
  options.peer_defaults.max_inflight = 2;
  options.peer_defaults.breaker = CircuitBreakerOptions::ForTests();
  options.peer_defaults.breaker->base_open_delay = 1ms;
  options.peer_defaults.breaker->max_open_delay = 4ms;
  auto coordinator = *PeerListCoordinator::Create(options, clock, metrics, tracker);
  for (int i = 0; i < 8; ++i)
    ASSERT_TRUE(coordinator->AddPeer(testing::Desc("p" + std::to_string(i))).ok());

  constexpr int kThreads = 6;
  constexpr int kIterations = 3000;
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, exhausted{0}, deadline{0}, unavailable{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      core::RequestMeta meta;
      for (int i = 0; i < kIterations; ++i) {
        meta.time_to_live.reset();
        if (i % 3 == 0) meta.time_to_live = 2ms;
        meta.shard_key = "k" + std::to_string((t * 7 + i) % 50);
        auto lease = coordinator->Acquire(meta);
        if (lease.ok()) {
          ++ok;
          auto code = (i % 17 == 0) ? core::StatusCode::kUnavailable : core::StatusCode::kOk;
          lease->Release(code, std::chrono::microseconds(50 + i % 100));
        } else if (lease.status().code() == absl::StatusCode::kResourceExhausted) {
          ++exhausted;
        } else if (lease.status().code() == absl::StatusCode::kDeadlineExceeded) {
          ++deadline;
        } else {
          ++unavailable;
        }
      }
    });
  }
  std::thread churn([&] {
    int n = 0;
    while (!stop.load()) {
      std::string id = "p" + std::to_string(n % 8);
      (void)coordinator->SetPeerStatus(id,
                                       n % 2 ? PeerStatus::kAvailable : PeerStatus::kUnavailable);
      tracker->RecordHeartbeat(id);
      if (n % 5 == 0) {
        (void)coordinator->RemovePeer("extra");
        (void)coordinator->AddPeer(testing::Desc("extra"));
      }
      (void)tracker->Diagnostics();
      (void)coordinator->PeerStates();
      ++n;
      std::this_thread::sleep_for(200us);
    }
  });
  for (auto& worker : workers) worker.join();
  stop = true;
  churn.join();
  EXPECT_EQ(ok + exhausted + deadline + unavailable, kThreads * kIterations);
  EXPECT_GT(ok.load(), 0);
  // No request without a deadline ever ended in DeadlineExceeded: every
  // DeadlineExceeded was counted by the coordinator as such.
  EXPECT_EQ(metrics->Total("omnirelay.peer.acquire_deadline_exceeded"), deadline.load());
  EXPECT_EQ(metrics->Total("omnirelay.peer.pool_exhausted"), exhausted.load());
  for (const auto& state : coordinator->PeerStates())
    EXPECT_EQ(state.inflight, 0) << state.descriptor.id;
  EXPECT_EQ(metrics->Total("omnirelay.peer.inflight"), 0);
  EXPECT_EQ(coordinator->waiting(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllChoosers, StressTest,
                         ::testing::Values("round-robin", "two-random", "fewest-pending",
                                           "preferred", "hash", "least-latency"));

}  // namespace
}  // namespace omnirelay::peers
