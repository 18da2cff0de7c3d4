// Proves the acquire+release hot path allocates nothing: this binary replaces
// the global operator new with one that counts calls per thread, warms every
// chooser up (first releases create this thread's statistics cells and
// histogram rows), then requires zero allocations over many more
// acquire+release pairs. Its own binary, so the counting allocator touches no
// other test.
#include <gtest/gtest.h>

#include <optional>

#include "omnirelay/peers/geo_chooser.h"
#include "omnirelay/peers/test_util.h"

OMNIRELAY_COUNT_ALLOCATIONS();

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;

class HotPathAllocationTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HotPathAllocationTest, AcquireReleaseAllocatesNothing) {
  auto metrics = std::make_shared<core::MetricsRegistry>();
  PeerListCoordinatorOptions options;
  options.chooser = GetParam();
  options.service = "svc";
  options.chooser_options.seed = 5;
  options.chooser_options.preferred_zone = "z0";
  // Failures feed the breaker (its mutex path) but never trip it here: an
  // open breaker arms a timer, which is not the steady-state hot path.
  options.peer_defaults.breaker->consecutive_failures = 1 << 30;
  auto coordinator = *PeerListCoordinator::Create(options, core::SystemClock::Shared(), metrics);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(
        coordinator->AddPeer(testing::Desc("p" + std::to_string(i), i % 2 ? "z1" : "z0")).ok());
  }
  std::vector<core::RequestMeta> metas(64);
  for (std::size_t k = 0; k < metas.size(); ++k) metas[k].shard_key = "s" + std::to_string(k);
  auto cycle = [&](int n) {
    for (int i = 0; i < n; ++i) {
      auto lease = coordinator->Acquire(metas[i % metas.size()]);
      if (!lease.ok()) std::abort();
      lease->Release(i % 3 ? core::StatusCode::kOk : core::StatusCode::kUnavailable,
                     std::chrono::microseconds(900 + i % 400));
    }
  };
  cycle(20000);  // warm-up: cells, histogram rows, snapshot cache
  const std::uint64_t before = testing::thread_allocations;
  cycle(20000);
  EXPECT_EQ(testing::thread_allocations - before, 0u) << "allocations on the acquire+release path";
  // The counter works (a check that could not fail would prove nothing).
  const std::uint64_t probe = testing::thread_allocations;
  // (An explicit call: a new-expression paired with delete may be elided.)
  void* p = ::operator new(sizeof(int));
  ::operator delete(p);
  EXPECT_EQ(testing::thread_allocations - probe, 1u);
}

// Fewest-pending's buckets are sized when the snapshot is built: the first
// lease ever taken (which moves a peer to a bucket nothing used before, as
// the geo chooser's other region does when the mode first flips) allocates
// nothing. Releases are left out: a thread's first release on a peer creates
// its statistics cells (the documented one-time cost).
TEST(FewestPendingAllocationTest, FirstAcquiresAllocateNothing) {
  PeerListCoordinatorOptions options;
  options.chooser = "fewest-pending";
  options.service = "svc";
  auto coordinator = *PeerListCoordinator::Create(options, core::SystemClock::Shared(),
                                                  std::make_shared<core::MetricsRegistry>());
  for (int i = 0; i < 8; ++i)
    ASSERT_TRUE(coordinator->AddPeer(testing::Desc("p" + std::to_string(i))).ok());
  std::vector<std::optional<PeerLease>> leases(24);  // 3 per peer: levels 1..3
  core::RequestMeta meta;
  const std::uint64_t before = testing::thread_allocations;
  for (auto& lease : leases) {
    auto acquired = coordinator->Acquire(meta);
    if (!acquired.ok()) std::abort();
    lease.emplace(*std::move(acquired));
  }
  EXPECT_EQ(testing::thread_allocations - before, 0u) << "allocations on first acquires";
}

INSTANTIATE_TEST_SUITE_P(Choosers, HotPathAllocationTest,
                         ::testing::Values("round-robin", "two-random", "fewest-pending",
                                           "preferred", "hash", "least-latency"));

}  // namespace
}  // namespace omnirelay::peers

namespace omnirelay::peers {
namespace {

// The geo chooser over fewest-pending, on the system clock so evaluations
// (every 1 ms here) run inside the measured window too.
TEST(GeoAllocationTest, AcquireReleaseAllocatesNothing) {
  auto metrics = std::make_shared<core::MetricsRegistry>();
  auto clock = core::SystemClock::Shared();
  PeerListCoordinatorOptions options;
  options.service = "svc";
  options.peer_defaults.breaker->consecutive_failures = 1 << 30;
  options.chooser_factory = [&]() -> std::unique_ptr<PeerChooser> {
    GeoChooserOptions geo;
    geo.region = "west";
    geo.evaluate_every = std::chrono::milliseconds(1);
    geo.latency_threshold_ms = 0.95;  // samples straddle it: both modes get exercised
    geo.hold = std::chrono::milliseconds(2);
    geo.probe_every = 7;
    geo.inner_options.seed = 3;
    return *GeoChooser::Create(geo, clock, metrics);
  };
  auto coordinator = *PeerListCoordinator::Create(options, clock, metrics);
  for (int i = 0; i < 100; ++i) {
    PeerDescriptor d = testing::Desc("p" + std::to_string(i));
    d.region = i % 2 ? "east" : "west";
    ASSERT_TRUE(coordinator->AddPeer(d).ok());
  }
  core::RequestMeta meta;
  auto cycle = [&](int n) {
    for (int i = 0; i < n; ++i) {
      auto lease = coordinator->Acquire(meta);
      if (!lease.ok()) std::abort();
      lease->Release(core::StatusCode::kOk,
                     std::chrono::microseconds(i % 2000 < 1000 ? 500 : 1500));
    }
  };
  cycle(50000);
  // Which peers the geo chooser leases depends on timing (mode flips every
  // few ms on the system clock), so a remote peer may not have seen both
  // latencies during the warm-up and would allocate its first histogram row
  // in the measured window (the documented one-time cost). Warm every
  // peer's cells in this thread explicitly.
  for (const auto& peer : coordinator->snapshot()->peers) {
    peer->RecordFeedback(core::StatusCode::kOk, std::chrono::microseconds(500));
    peer->RecordFeedback(core::StatusCode::kOk, std::chrono::microseconds(1500));
  }
  const std::uint64_t before = testing::thread_allocations;
  cycle(50000);
  EXPECT_EQ(testing::thread_allocations - before, 0u)
      << "allocations on the geo acquire+release path";
}

}  // namespace
}  // namespace omnirelay::peers
