// The per-thread statistics behind omnirelay.peer.successes / .failures /
// .lease.duration: sums read at scrape time must be exact once releases are
// done, monotonic while they run, survive threads exiting, and leases must
// work without a shared reference count (a removed or orphaned peer stays
// usable until its last lease is released). Labelled tsan with peers_test.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "omnirelay/peers/coarse_clock.h"
#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;

const core::MetricPoint* FindHistogram(const std::vector<core::MetricPoint>& points,
                                       const std::string& peer) {
  for (const auto& point : points) {
    if (point.name == "omnirelay.peer.lease.duration" && point.tags.at("rpc.peer") == peer) {
      return &point;
    }
  }
  return nullptr;
}

class ScrapeExactnessTest : public ::testing::TestWithParam<std::string> {};

// Several threads acquire and release with mixed outcomes and latencies
// while another thread scrapes; the scraped sums only grow, never pass what
// was released, and equal it exactly once the workers are joined (their
// blocks then belong to no live thread). A second round on fresh threads
// (which adopt the exited threads' blocks) keeps adding up exactly.
TEST_P(ScrapeExactnessTest, SumsAreExactUnderConcurrentAcquireRelease) {
  testing::Fixture fixture;
  // No breaker: which interleavings put consecutive failures on one peer
  // depends on scheduling (fewest-pending under ASan opened every breaker,
  // and the ManualClock never re-admits); this test is about counting.
  auto coordinator = fixture.Make(GetParam(), 5, 0, {}, nullptr, /*with_breaker=*/false);
  constexpr int kThreads = 4;
  constexpr int kIterations = 5000;
  // Outcome per iteration: i % 5 == 0 -> Unavailable (server failure),
  // i % 5 == 1 -> InvalidArgument (neither), else OK. Latency (i % 7 + 1) ms.
  auto outcome_of = [](int i) {
    return i % 5 == 0   ? core::StatusCode::kUnavailable
           : i % 5 == 1 ? core::StatusCode::kInvalidArgument
                        : core::StatusCode::kOk;
  };
  std::uint64_t expect_ok = 0, expect_failed = 0;
  double expect_latency_sum = 0;
  for (int i = 0; i < kIterations; ++i) {
    expect_ok += outcome_of(i) == core::StatusCode::kOk;
    expect_failed += outcome_of(i) == core::StatusCode::kUnavailable;
    expect_latency_sum += i % 7 + 1;
  }

  auto run_round = [&] {
    std::atomic<int> done_workers{0};
    std::atomic<std::uint64_t> released{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < kThreads; ++t) {
      workers.emplace_back([&, t] {
        core::RequestMeta meta;
        meta.shard_key = "key-" + std::to_string(t);
        for (int i = 0; i < kIterations; ++i) {
          auto lease = coordinator->Acquire(meta);
          if (!lease.ok()) {
            ADD_FAILURE() << lease.status();
            break;
          }
          lease->Release(outcome_of(i), std::chrono::milliseconds(i % 7 + 1));
          released.fetch_add(1, std::memory_order_release);
        }
        done_workers.fetch_add(1);
      });
    }
    // Concurrent scrapes: monotonic and never ahead of the releases done
    // (counted from what earlier rounds left in the series).
    const double base =
        fixture.Total("omnirelay.peer.successes") + fixture.Total("omnirelay.peer.failures");
    double last_total = base;
    int scrapes = 0;
    while (done_workers.load() < kThreads || scrapes == 0) {
      const double ok = fixture.Total("omnirelay.peer.successes");
      const double failed = fixture.Total("omnirelay.peer.failures");
      const std::uint64_t released_after = released.load(std::memory_order_acquire);
      EXPECT_GE(ok + failed, last_total);
      // (+ kThreads: each worker may be inside one Release, counted in the
      // cells but not yet in `released`.)
      EXPECT_LE(ok + failed, base + static_cast<double>(released_after + kThreads));
      last_total = ok + failed;
      (void)fixture.metrics->RenderPrometheus();
      ++scrapes;
    }
    for (auto& worker : workers) worker.join();
  };

  run_round();
  EXPECT_EQ(fixture.Total("omnirelay.peer.successes"), static_cast<double>(kThreads * expect_ok));
  EXPECT_EQ(fixture.Total("omnirelay.peer.failures"),
            static_cast<double>(kThreads * expect_failed));
  EXPECT_EQ(fixture.Total("omnirelay.peer.inflight"), 0);

  auto histogram_totals = [&] {
    std::uint64_t count = 0;
    double sum = 0;
    const auto points = fixture.metrics->Snapshot();
    for (int p = 0; p < 5; ++p) {
      const auto* point = FindHistogram(points, "p" + std::to_string(p));
      if (point == nullptr) {
        ADD_FAILURE() << "no lease.duration series for p" << p;
        continue;
      }
      count += point->histogram.count;
      sum += point->histogram.sum;
    }
    return std::make_pair(count, sum);
  };
  auto [count, sum] = histogram_totals();
  EXPECT_EQ(count, static_cast<std::uint64_t>(kThreads) * kIterations);
  EXPECT_NEAR(sum, kThreads * expect_latency_sum, 1e-6);

  // Per peer, the scrape and the peer's own snapshot read the same cells.
  std::uint64_t from_states = 0;
  for (const auto& state : coordinator->PeerStates()) {
    EXPECT_EQ(static_cast<double>(state.successes),
              fixture.Total("omnirelay.peer.successes", {{"rpc.peer", state.descriptor.id}}));
    from_states += state.successes;
  }
  EXPECT_EQ(from_states, kThreads * expect_ok);

  // The Prometheus exposition carries the same exact figures.
  const std::string text = fixture.metrics->RenderPrometheus();
  std::uint64_t rendered_count = 0;
  for (std::size_t at = 0;
       (at = text.find("omnirelay_peer_lease_duration_seconds_count{", at)) != std::string::npos;) {
    const std::size_t value = text.find("} ", at) + 2;
    rendered_count += std::stoull(text.substr(value, text.find('\n', value) - value));
    at = value;
  }
  EXPECT_EQ(rendered_count, static_cast<std::uint64_t>(kThreads) * kIterations);

  // Fresh threads adopt the exited threads' blocks and keep adding exactly.
  run_round();
  EXPECT_EQ(fixture.Total("omnirelay.peer.successes"),
            static_cast<double>(2 * kThreads * expect_ok));
  EXPECT_EQ(fixture.Total("omnirelay.peer.failures"),
            static_cast<double>(2 * kThreads * expect_failed));
  std::tie(count, sum) = histogram_totals();
  EXPECT_EQ(count, 2u * kThreads * kIterations);
  EXPECT_NEAR(sum, 2 * kThreads * expect_latency_sum, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Choosers, ScrapeExactnessTest,
                         ::testing::Values("round-robin", "two-random", "fewest-pending", "hash"));

// A lease on a peer removed from the list (and dropped by everyone) keeps the
// peer object alive through its in-flight count; its release is counted in
// the series, which keeps the final values after the peer is gone.
TEST(LeaseLifetimeTest, RemovedPeerStaysUsableUntilItsLastLeaseIsReleased) {
  testing::Fixture fixture;
  auto coordinator = fixture.Make("round-robin", 1);
  auto first = coordinator->Acquire({});
  auto second = coordinator->Acquire({});
  ASSERT_TRUE(first.ok() && second.ok());
  const std::string id = first->peer()->id();
  ASSERT_TRUE(coordinator->RemovePeer(id).ok());
  ASSERT_TRUE(coordinator->AddPeer(testing::Desc("replacement")).ok());
  // Refresh this thread's snapshot cache so nothing but the leases holds it.
  auto third = coordinator->Acquire({});
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->peer()->id(), "replacement");
  EXPECT_EQ(first->peer()->inflight(), 2);
  first->Release(core::StatusCode::kOk, 2ms);
  // The last release deletes the removed peer (ASan reports any later touch).
  second->Release(core::StatusCode::kUnavailable, 3ms);
  third->Release(core::StatusCode::kOk, 1ms);
  EXPECT_EQ(fixture.Total("omnirelay.peer.successes", {{"rpc.peer", id}}), 1);
  EXPECT_EQ(fixture.Total("omnirelay.peer.failures", {{"rpc.peer", id}}), 1);
  EXPECT_EQ(fixture.Total("omnirelay.peer.inflight", {{"rpc.peer", id}}), 0);
  const auto points = fixture.metrics->Snapshot();
  const auto* histogram = FindHistogram(points, id);
  ASSERT_NE(histogram, nullptr);
  EXPECT_EQ(histogram->histogram.count, 2u);
  EXPECT_NEAR(histogram->histogram.sum, 5.0, 1e-9);
}

// Leases may outlive the coordinator: releasing then only returns the slot.
TEST(LeaseLifetimeTest, LeaseOutlivesItsCoordinator) {
  testing::Fixture fixture;
  auto coordinator = fixture.Make("fewest-pending", 2);
  auto lease = coordinator->Acquire({});
  ASSERT_TRUE(lease.ok());
  const std::string id = lease->peer()->id();
  coordinator.reset();
  lease->Release(core::StatusCode::kOk, 1ms);
  EXPECT_FALSE(static_cast<bool>(*lease));
  EXPECT_EQ(fixture.Total("omnirelay.peer.successes", {{"rpc.peer", id}}), 1);
}

// A lease released on another thread than it was taken on (no cached
// snapshot of the coordinator there) still wakes a waiter and feeds the
// chooser: the release reaches the coordinator through the peer's weak owner.
TEST(LeaseLifetimeTest, ReleaseOnAnotherThreadWakesAWaiter) {
  auto clock = core::SystemClock::Shared();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  PeerListCoordinatorOptions options;
  options.chooser = "fewest-pending";
  options.chooser_options.seed = 7;
  options.peer_defaults.max_inflight = 1;
  auto coordinator = *PeerListCoordinator::Create(options, clock, metrics);
  ASSERT_TRUE(coordinator->AddPeer(testing::Desc("only")).ok());
  auto held = coordinator->Acquire({});
  ASSERT_TRUE(held.ok());

  std::atomic<bool> got{false};
  std::thread waiter([&] {
    core::RequestMeta meta;
    meta.time_to_live = 20s;
    auto lease = coordinator->Acquire(meta);
    EXPECT_TRUE(lease.ok()) << lease.status();
    got = lease.ok();
  });
  ASSERT_TRUE(testing::Eventually([&] { return coordinator->waiting() == 1; }));
  std::thread releaser(
      [lease = std::move(*held)]() mutable { lease.Release(core::StatusCode::kOk, 1ms); });
  releaser.join();
  waiter.join();
  EXPECT_TRUE(got);
  EXPECT_EQ(metrics->Total("omnirelay.peer.successes"), 1);
}

}  // namespace
}  // namespace omnirelay::peers

namespace omnirelay::peers {
namespace {

// The release path's inline bucket arithmetic must file every value exactly
// where core::LatencyHistogram would (the scrape merges by that index).
TEST(PeerStatsBucketTest, BucketOfMatchesLatencyHistogramBucketIndex) {
  std::vector<std::uint64_t> values;
  for (std::uint64_t v = 0; v < 5000; ++v) values.push_back(v);
  for (int e = 6; e < 64; ++e) {
    const std::uint64_t base = std::uint64_t{1} << e;
    for (std::uint64_t d : {std::uint64_t{0}, std::uint64_t{1}, base / 3, base / 2, base - 1}) {
      values.push_back(base + d);
      values.push_back(base - 1 - (d % base));
    }
  }
  values.push_back(UINT64_MAX);
  for (std::uint64_t ticks : values) {
    std::uint32_t row = 0, bucket = 0;
    internal::BucketOf(ticks, row, bucket);
    EXPECT_EQ(row * internal::kHistogramRowSize + bucket,
              core::LatencyHistogram::BucketIndex(ticks))
        << ticks;
  }
}

// The last-success clock: a ticker-refreshed time close to the real clock,
// which keeps moving, stops ticking when nobody reads it and restarts on the
// next read with the exact time.
TEST(CoarseClockTest, TracksTheWallClockAndRestartsAfterIdling) {
  auto real_ns = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const std::int64_t before = real_ns();
  const std::int64_t first = internal::CoarseNowNanos();
  EXPECT_GE(first, before - 5'000'000'000);  // generous: the machine may be loaded
  EXPECT_LE(first, real_ns());
  // It advances (the ticker runs): poll, bounded.
  std::int64_t later = first;
  for (int i = 0; i < 2000 && later == first; ++i) {
    std::this_thread::sleep_for(1ms);
    later = internal::CoarseNowNanos();
  }
  EXPECT_GT(later, first);
  EXPECT_LE(later, real_ns());
  // Unread for kIdleTicks periods, it stops (poll up to 30 s on a loaded machine).
  for (int i = 0; i < 3000; ++i) {
    if (internal::g_coarse_clock.mode.load() == internal::kStopped) break;
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(internal::g_coarse_clock.mode.load(), internal::kStopped);
  // The next read is the exact clock and restarts the ticker.
  const std::int64_t restart_before = real_ns();
  const std::int64_t restarted = internal::CoarseNowNanos();
  EXPECT_GE(restarted, restart_before);
  EXPECT_LE(restarted, real_ns());
  EXPECT_NE(internal::g_coarse_clock.mode.load(), internal::kStopped);
}

// A forked child has no ticker (only the forking thread survives): the
// pthread_atfork handler resets the clock so the child's first read restarts
// one, instead of reading the parent's last tick forever. (Not under TSan,
// which does not support fork in a multi-threaded process.)
#if !defined(__SANITIZE_THREAD__)
TEST(CoarseClockTest, AForkedChildGetsItsOwnTicker) {
  (void)internal::CoarseNowNanos();  // the parent's ticker runs
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::int64_t first = internal::CoarseNowNanos();
    for (int i = 0; i < 5000; ++i) {
      usleep(1000);
      if (internal::CoarseNowNanos() > first) _exit(0);
    }
    _exit(1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}
#endif

}  // namespace
}  // namespace omnirelay::peers
