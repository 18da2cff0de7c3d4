#include "omnirelay/core/metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

namespace omnirelay::core {
namespace {

const MetricDescriptor kPoolExhausted{"omnirelay.peer.pool_exhausted", MetricKind::kCounter, "1",
                                      "Requests that found every peer busy."};
const MetricDescriptor kLeaseRejected{"omnirelay.peer.lease_rejected", MetricKind::kCounter, "1",
                                      "Lease attempts refused by a peer."};
const MetricDescriptor kInflight{"omnirelay.peer.inflight", MetricKind::kUpDownCounter, "1",
                                 "Requests in flight per peer."};
const MetricDescriptor kLeaseDuration{"omnirelay.peer.lease.duration",
                                      MetricKind::kHistogram,
                                      "ms",
                                      "Lease hold time.",
                                      {1, 10, 100}};

TEST(MetricsNamingTest, DottedNamesBecomePrometheusNames) {
  EXPECT_EQ(
      MetricsRegistry::PrometheusName("omnirelay.peer.pool_exhausted", MetricKind::kCounter, "1"),
      "omnirelay_peer_pool_exhausted_total");
  EXPECT_EQ(MetricsRegistry::PrometheusName("omnirelay.peer.lease.duration", MetricKind::kHistogram,
                                            "ms"),
            "omnirelay_peer_lease_duration_seconds");
  EXPECT_EQ(MetricsRegistry::PrometheusName("omnirelay.peer.inflight", MetricKind::kUpDownCounter,
                                            "{request}"),
            "omnirelay_peer_inflight");
  EXPECT_EQ(MetricsRegistry::PrometheusLabel("peer.rejection_reason"), "peer_rejection_reason");
}

TEST(MetricsRegistryTest, ExactPrometheusExposition) {
  MetricsRegistry registry;
  registry.GetCounter(kPoolExhausted, {{"rpc.service", "trace.Analytics"}}).Add();
  registry.GetCounter(kPoolExhausted, {{"rpc.service", "trace.Analytics"}}).Add(2);
  registry.GetCounter(kLeaseRejected, {{"peer.rejection_reason", "busy"}, {"rpc.peer", "b1"}})
      .Add(5);
  registry.GetUpDownCounter(kInflight, {{"rpc.peer", "b1"}}).Add(3);
  registry.GetUpDownCounter(kInflight, {{"rpc.peer", "b1"}}).Add(-1);
  auto& duration = registry.GetHistogram(kLeaseDuration, {{"rpc.peer", "b1"}});
  duration.Record(0.5);
  duration.Record(5);
  duration.Record(50);
  duration.Record(500);

  const std::string expected =
      "# HELP omnirelay_peer_inflight Requests in flight per peer.\n"
      "# TYPE omnirelay_peer_inflight gauge\n"
      "omnirelay_peer_inflight{rpc_peer=\"b1\"} 2\n"
      "# HELP omnirelay_peer_lease_duration_seconds Lease hold time.\n"
      "# TYPE omnirelay_peer_lease_duration_seconds histogram\n"
      "omnirelay_peer_lease_duration_seconds_count{rpc_peer=\"b1\"} 4\n"
      "omnirelay_peer_lease_duration_seconds_sum{rpc_peer=\"b1\"} 0.5555\n"
      "omnirelay_peer_lease_duration_seconds_bucket{rpc_peer=\"b1\",le=\"0.001\"} 1\n"
      "omnirelay_peer_lease_duration_seconds_bucket{rpc_peer=\"b1\",le=\"0.01\"} 2\n"
      "omnirelay_peer_lease_duration_seconds_bucket{rpc_peer=\"b1\",le=\"0.1\"} 3\n"
      "omnirelay_peer_lease_duration_seconds_bucket{rpc_peer=\"b1\",le=\"+Inf\"} 4\n"
      "# HELP omnirelay_peer_lease_rejected_total Lease attempts refused by a peer.\n"
      "# TYPE omnirelay_peer_lease_rejected_total counter\n"
      "omnirelay_peer_lease_rejected_total{peer_rejection_reason=\"busy\",rpc_peer=\"b1\"} 5\n"
      "# HELP omnirelay_peer_pool_exhausted_total Requests that found every peer busy.\n"
      "# TYPE omnirelay_peer_pool_exhausted_total counter\n"
      "omnirelay_peer_pool_exhausted_total{rpc_service=\"trace.Analytics\"} 3\n";
  EXPECT_EQ(registry.RenderPrometheus(), expected);
}

TEST(MetricsRegistryTest, SnapshotKeepsDottedNamesAndTags) {
  MetricsRegistry registry;
  registry.GetCounter(kLeaseRejected, {{"peer.rejection_reason", "busy"}, {"rpc.peer", "a"}})
      .Add(2);
  registry.GetCounter(kLeaseRejected, {{"peer.rejection_reason", "busy"}, {"rpc.peer", "b"}})
      .Add(3);
  registry.GetCounter(kLeaseRejected, {{"peer.rejection_reason", "unhealthy"}, {"rpc.peer", "b"}})
      .Add(7);
  registry.GetHistogram(kLeaseDuration).Record(4);

  EXPECT_EQ(registry.Total("omnirelay.peer.lease_rejected"), 12);
  EXPECT_EQ(registry.Total("omnirelay.peer.lease_rejected", {{"peer.rejection_reason", "busy"}}),
            5);
  EXPECT_EQ(registry.Total("omnirelay.peer.lease_rejected", {{"rpc.peer", "b"}}), 10);
  EXPECT_EQ(registry.Total("omnirelay.peer.missing"), 0);

  bool saw_histogram = false;
  for (const auto& point : registry.Snapshot()) {
    if (point.name == "omnirelay.peer.lease.duration") {
      saw_histogram = true;
      EXPECT_EQ(point.kind, MetricKind::kHistogram);
      EXPECT_EQ(point.histogram.count, 1u);
      EXPECT_NEAR(point.histogram.p99, 4, 0.1);
    }
  }
  EXPECT_TRUE(saw_histogram);
}

TEST(MetricsRegistryTest, SeriesReferencesAreStableAndConcurrent) {
  MetricsRegistry registry;
  Counter& counter = registry.GetCounter(kPoolExhausted);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) {
        counter.Add();
        // Creating other series concurrently must not move `counter`.
        registry.GetCounter(kLeaseRejected, {{"rpc.peer", std::to_string(t * 100 + i % 50)}});
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(counter.Value(), 40000);
  EXPECT_EQ(&counter, &registry.GetCounter(kPoolExhausted));
}

const MetricDescriptor kSuccesses{"omnirelay.peer.successes", MetricKind::kCounter, "{request}",
                                  "Successful leases."};
const MetricDescriptor kHealthy{"omnirelay.peer.lease.healthy", MetricKind::kGauge, "{peer}",
                                "Healthy peers."};

TEST(MetricsRegistryTest, ObservableSeriesReadAtScrapeTime) {
  MetricsRegistry registry;
  std::atomic<int> inflight{2};
  std::atomic<std::uint64_t> successes_a{7};
  std::atomic<std::uint64_t> successes_b{1};
  auto inflight_handle = registry.RegisterObservable(
      kInflight, {{"rpc.peer", "b1"}}, [&] { return static_cast<double>(inflight.load()); });
  auto a = registry.RegisterObservable(kSuccesses, {{"rpc.peer", "a"}},
                                       [&] { return static_cast<double>(successes_a.load()); });
  auto b = registry.RegisterObservable(kSuccesses, {{"rpc.peer", "b"}},
                                       [&] { return static_cast<double>(successes_b.load()); });
  auto healthy = registry.RegisterObservable(kHealthy, {}, [] { return 3.0; });
  // A push series with the same name and tags as an observable one: one line, the sum.
  registry.GetUpDownCounter(kInflight, {{"rpc.peer", "b1"}}).Add(1);
  registry.GetUpDownCounter(kInflight, {{"rpc.peer", "a0"}}).Add(4);
  inflight = 5;  // read at scrape time, not at registration

  const std::string expected =
      "# HELP omnirelay_peer_inflight Requests in flight per peer.\n"
      "# TYPE omnirelay_peer_inflight gauge\n"
      "omnirelay_peer_inflight{rpc_peer=\"a0\"} 4\n"
      "omnirelay_peer_inflight{rpc_peer=\"b1\"} 6\n"
      "# HELP omnirelay_peer_lease_healthy Healthy peers.\n"
      "# TYPE omnirelay_peer_lease_healthy gauge\n"
      "omnirelay_peer_lease_healthy 3\n"
      "# HELP omnirelay_peer_successes_total Successful leases.\n"
      "# TYPE omnirelay_peer_successes_total counter\n"
      "omnirelay_peer_successes_total{rpc_peer=\"a\"} 7\n"
      "omnirelay_peer_successes_total{rpc_peer=\"b\"} 1\n";
  EXPECT_EQ(registry.RenderPrometheus(), expected);
  EXPECT_EQ(registry.Total("omnirelay.peer.inflight"), 10);
  EXPECT_EQ(registry.Total("omnirelay.peer.successes", {{"rpc.peer", "a"}}), 7);

  // Unregistering keeps a counter's final value in the series (like a push
  // counter), and a new observer with the same tags adds to it; a gauge's
  // contribution goes away, its series stays.
  a.Reset();
  successes_a = 100;  // no longer read
  EXPECT_FALSE(a);
  EXPECT_EQ(registry.Total("omnirelay.peer.successes", {{"rpc.peer", "a"}}), 7);
  auto a_again = registry.RegisterObservable(kSuccesses, {{"rpc.peer", "a"}}, [] { return 2.0; });
  EXPECT_EQ(registry.Total("omnirelay.peer.successes", {{"rpc.peer", "a"}}), 9);
  {
    ObservableHandle moved = std::move(healthy);
    EXPECT_FALSE(healthy);
  }
  EXPECT_EQ(registry.Total("omnirelay.peer.lease.healthy"), 0);
  EXPECT_NE(registry.RenderPrometheus().find("omnirelay_peer_lease_healthy 0\n"),
            std::string::npos);
}

TEST(MetricsRegistryTest, ObservableUnregisterRacesWithScrapes) {
  MetricsRegistry registry;
  std::atomic<bool> done{false};
  std::thread scraper([&] {
    while (!done.load()) (void)registry.RenderPrometheus();
  });
  for (int i = 0; i < 2000; ++i) {
    auto value = std::make_unique<std::atomic<std::uint64_t>>(1);
    auto handle = registry.RegisterObservable(
        kSuccesses, {{"rpc.peer", std::to_string(i % 10)}},
        [raw = value.get()] { return static_cast<double>(raw->load()); });
    handle.Reset();  // after this the callback is never called: freeing `value` is safe
    value.reset();
  }
  done = true;
  scraper.join();
  EXPECT_EQ(registry.Total("omnirelay.peer.successes"), 2000);
}

}  // namespace
}  // namespace omnirelay::core
