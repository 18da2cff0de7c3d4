// GeoChooser on a ManualClock: stays local when healthy, falls back on
// latency, failures and no eligible peer, returns only after the hold, and
// does not flap under oscillating inputs.
#include "omnirelay/peers/geo_chooser.h"

#include <gtest/gtest.h>

#include <thread>

#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;
using Mode = GeoChooser::Mode;

struct GeoFixture {
  std::shared_ptr<core::ManualClock> clock = std::make_shared<core::ManualClock>();
  std::shared_ptr<core::MetricsRegistry> metrics = std::make_shared<core::MetricsRegistry>();
  GeoChooser* geo = nullptr;
  std::unique_ptr<PeerListCoordinator> coordinator;
  std::vector<std::shared_ptr<Peer>> west, east;

  explicit GeoFixture(GeoChooserOptions geo_options = Defaults(), int per_region = 3) {
    PeerListCoordinatorOptions options;
    options.service = "svc";
    options.peer_defaults.breaker = std::nullopt;  // failures must not make peers ineligible
    options.chooser_factory = [&]() -> std::unique_ptr<PeerChooser> {
      auto made = GeoChooser::Create(geo_options, clock, metrics);
      if (!made.ok()) std::abort();
      geo = made->get();
      return *std::move(made);
    };
    coordinator = *PeerListCoordinator::Create(options, clock, metrics);
    for (int i = 0; i < per_region; ++i) {
      for (const char* region : {"west", "east"}) {
        PeerDescriptor d = testing::Desc(std::string(region) + std::to_string(i));
        d.region = region;
        auto peer = *coordinator->AddPeer(d);
        (std::string(region) == "west" ? west : east).push_back(peer);
      }
    }
  }
  static GeoChooserOptions Defaults() {
    GeoChooserOptions o;
    o.region = "west";
    o.latency_threshold_ms = 100;
    o.failure_rate_threshold = 0.5;
    o.min_samples = 10;
    o.hold = 5s;
    o.evaluate_every = 100ms;
    o.probe_every = 0;  // tests drive the local peers' feedback themselves
    o.inner_options.seed = 7;
    return o;
  }
  // The region of one acquire (released at once with a fast success).
  std::string PickRegion() {
    auto lease = coordinator->Acquire({});
    if (!lease.ok()) return "error";
    std::string region = lease->peer()->descriptor().region;
    lease->Release(core::StatusCode::kOk, 1ms);
    return region;
  }
  int LocalOf(int n) {
    int local = 0;
    for (int i = 0; i < n; ++i) local += PickRegion() == "west";
    return local;
  }
  void FeedWest(core::Duration latency, core::StatusCode outcome = core::StatusCode::kOk,
                int times = 10) {
    for (auto& peer : west) {
      for (int i = 0; i < times; ++i) peer->RecordFeedback(outcome, latency);
    }
  }
  // One evaluation interval passes and a pick runs the evaluation.
  void Tick(core::Duration step = 100ms) {
    clock->Advance(step);
    PickRegion();
  }
};

TEST(GeoChooserTest, StaysLocalWhenHealthy) {
  GeoFixture f;
  for (int round = 0; round < 20; ++round) {
    f.FeedWest(20ms);
    f.Tick();
  }
  EXPECT_EQ(f.geo->mode(), Mode::kLocal);
  EXPECT_EQ(f.LocalOf(100), 100);
  EXPECT_EQ(f.geo->transitions(), 0u);
  EXPECT_GE(f.metrics->Total("omnirelay.geo.routed", {{"geo.region", "west"}}), 100);
  EXPECT_EQ(f.metrics->Total("omnirelay.geo.routed", {{"geo.region", "east"}}), 0);
}

TEST(GeoChooserTest, FallsBackOnLatency) {
  GeoFixture f;
  f.FeedWest(400ms);
  f.Tick();
  EXPECT_EQ(f.geo->mode(), Mode::kFallback);
  EXPECT_EQ(f.LocalOf(100), 0);
  EXPECT_EQ(f.metrics->Total("omnirelay.geo.mode"), 1);
  EXPECT_EQ(f.metrics->Total("omnirelay.geo.transitions", {{"geo.mode", "fallback"}}), 1);
}

TEST(GeoChooserTest, PercentileSignal) {
  auto options = GeoFixture::Defaults();
  options.latency_signal = GeoLatencySignal::kP99;
  GeoFixture f(options);
  f.FeedWest(20ms, core::StatusCode::kOk, 98);
  f.Tick();
  EXPECT_EQ(f.geo->mode(), Mode::kLocal);
  f.FeedWest(900ms, core::StatusCode::kOk, 3);  // a tail the EWMA would also see, p99 does
  f.Tick();
  EXPECT_EQ(f.geo->mode(), Mode::kFallback);
}

TEST(GeoChooserTest, FallsBackOnFailures) {
  GeoFixture f;
  f.Tick();  // baseline
  f.FeedWest(5ms, core::StatusCode::kUnavailable, 5);
  f.FeedWest(5ms, core::StatusCode::kOk, 2);
  f.Tick();
  EXPECT_EQ(f.geo->mode(), Mode::kFallback);
  EXPECT_EQ(f.LocalOf(50), 0);
}

TEST(GeoChooserTest, FailuresBelowMinSamplesDoNotCount) {
  auto options = GeoFixture::Defaults();
  options.min_samples = 1000;
  GeoFixture f(options);
  f.Tick();
  f.FeedWest(5ms, core::StatusCode::kUnavailable, 5);
  f.Tick();
  EXPECT_EQ(f.geo->mode(), Mode::kLocal);
}

TEST(GeoChooserTest, FallsBackWhenNoLocalPeerIsHealthy) {
  GeoFixture f;
  for (auto& peer : f.west)
    ASSERT_TRUE(f.coordinator->SetPeerStatus(peer->id(), PeerStatus::kUnavailable).ok());
  // Even before an evaluation, a pick never fails while another region can serve.
  EXPECT_EQ(f.PickRegion(), "east");
  f.Tick();
  EXPECT_EQ(f.geo->mode(), Mode::kFallback);
  for (auto& peer : f.west)
    ASSERT_TRUE(f.coordinator->SetPeerStatus(peer->id(), PeerStatus::kAvailable).ok());
  f.Tick();
  EXPECT_EQ(f.geo->mode(), Mode::kFallback) << "returned before the hold period";
}

TEST(GeoChooserTest, ReturnsAfterHoldAndNotBefore) {
  GeoFixture f;
  f.FeedWest(400ms);
  f.Tick();
  ASSERT_EQ(f.geo->mode(), Mode::kFallback);
  f.FeedWest(10ms, core::StatusCode::kOk, 30);  // EWMA back well under 100 ms
  f.Tick();                                     // good from here on
  const auto good_from = f.clock->Now();
  while (f.clock->Now() - good_from < 5s - 100ms) {
    f.Tick();
    ASSERT_EQ(f.geo->mode(), Mode::kFallback)
        << "returned after " << (f.clock->Now() - good_from).count() << "ns of a 5s hold";
    EXPECT_EQ(f.PickRegion(), "east");
  }
  f.Tick();
  f.Tick();
  EXPECT_EQ(f.geo->mode(), Mode::kLocal);
  EXPECT_EQ(f.LocalOf(50), 50);
  EXPECT_EQ(f.metrics->Total("omnirelay.geo.transitions", {{"geo.mode", "local"}}), 1);
  EXPECT_EQ(f.metrics->Total("omnirelay.geo.mode"), 0);
}

TEST(GeoChooserTest, NoFlappingUnderOscillatingLatency) {
  GeoFixture f;
  // Bad for 1 s, good for 2 s, repeatedly (hold is 5 s): one move out, none back.
  for (int cycle = 0; cycle < 10; ++cycle) {
    for (int i = 0; i < 10; ++i) {
      f.FeedWest(400ms);
      f.Tick();
    }
    for (int i = 0; i < 20; ++i) {
      f.FeedWest(10ms, core::StatusCode::kOk, 30);
      f.Tick();
    }
  }
  EXPECT_EQ(f.geo->mode(), Mode::kFallback);
  EXPECT_EQ(f.geo->transitions(), 1u);
}

TEST(GeoChooserTest, ProbesKeepLocalFeedbackFresh) {
  auto options = GeoFixture::Defaults();
  options.probe_every = 10;
  GeoFixture f(options);
  f.FeedWest(400ms);
  f.Tick();
  ASSERT_EQ(f.geo->mode(), Mode::kFallback);
  const int local = f.LocalOf(1000);
  EXPECT_GE(local, 90);
  EXPECT_LE(local, 110);
}

TEST(GeoChooserTest, RejectsBadOptions) {
  auto clock = std::make_shared<core::ManualClock>();
  GeoChooserOptions options;
  options.inner = "nope";
  EXPECT_EQ(GeoChooser::Create(options, clock, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.inner = "geo";
  EXPECT_FALSE(GeoChooser::Create(options, clock, nullptr).ok());
  options.inner = "round-robin";
  options.evaluate_every = 0ms;
  EXPECT_FALSE(GeoChooser::Create(options, clock, nullptr).ok());
  EXPECT_FALSE(ParseGeoLatencySignal("p75").ok());
  EXPECT_TRUE(ParseGeoLatencySignal("p90").ok());
}

TEST(GeoChooserTest, ConcurrentPicksWhileModeChanges) {
  auto options = GeoFixture::Defaults();
  options.hold = 0ms;
  GeoFixture f(options);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000 && !stop.load(); ++i) {
        auto lease = f.coordinator->Acquire({});
        if (!lease.ok()) {
          errors.fetch_add(1);
          continue;
        }
        lease->Release(core::StatusCode::kOk, 1ms);
      }
    });
  }
  for (int i = 0; i < 200; ++i) {
    f.FeedWest(i % 2 ? 400ms : 5ms, core::StatusCode::kOk, 5);
    f.clock->Advance(100ms);
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
}

}  // namespace
}  // namespace omnirelay::peers
