#include "omnirelay/peers/peer.h"

#include <gtest/gtest.h>

#include "omnirelay/peers/peer_metrics.h"
#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;
using testing::Desc;

TEST(PeerTest, CapRejectsAsBusyAndReleaseFreesSlot) {
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  PeerOptions options;
  options.max_inflight = 2;
  auto peer = Peer::Create(Desc("a"), options, clock, metrics);
  EXPECT_TRUE(peer->TryAcquire().ok());
  EXPECT_TRUE(peer->TryAcquire().ok());
  EXPECT_EQ(peer->TryAcquire().result, AcquireResult::kBusy);
  EXPECT_EQ(peer->inflight(), 2);
  EXPECT_EQ(metrics->Total("omnirelay.peer.inflight"), 2);
  EXPECT_EQ(metrics->Total("omnirelay.peer.lease_rejected", {{"peer.rejection_reason", "busy"}}),
            1);
  peer->Release(core::StatusCode::kOk, 5ms);
  EXPECT_TRUE(peer->TryAcquire().ok());
  EXPECT_EQ(metrics->Total("omnirelay.peer.successes", {{"rpc.peer", "a"}}), 1);
  // A peer lives until its last lease is released (peer.h): hand both back.
  peer->Release(core::StatusCode::kOk, 5ms);
  peer->Release(core::StatusCode::kOk, 5ms);
}

TEST(PeerTest, UnavailableAndUnhealthyRefuseAsUnhealthy) {
  auto clock = std::make_shared<core::ManualClock>();
  auto peer = Peer::Create(Desc("a"), {}, clock);
  peer->SetStatus(PeerStatus::kUnavailable);
  EXPECT_EQ(peer->TryAcquire().result, AcquireResult::kUnhealthy);
  EXPECT_FALSE(peer->IsEligible());
  peer->SetStatus(PeerStatus::kAvailable);
  EXPECT_TRUE(peer->TryAcquire().ok());
  peer->Release(core::StatusCode::kOk, 1ms);  // the peer lives until its last lease ends
}

TEST(PeerTest, OutcomesLatencyEwmaAndPercentiles) {
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  PeerOptions options;
  options.ewma_alpha = 0.5;
  auto peer = Peer::Create(Desc("a"), options, clock, metrics);
  EXPECT_FALSE(peer->LatencyEwmaMs().has_value());
  ASSERT_TRUE(peer->TryAcquire().ok());
  peer->Release(core::StatusCode::kOk, 10ms);
  EXPECT_DOUBLE_EQ(*peer->LatencyEwmaMs(), 10.0);
  ASSERT_TRUE(peer->TryAcquire().ok());
  clock->Advance(1s);
  peer->Release(core::StatusCode::kUnavailable, 20ms);
  EXPECT_DOUBLE_EQ(*peer->LatencyEwmaMs(), 15.0);
  ASSERT_TRUE(peer->TryAcquire().ok());
  peer->Release(core::StatusCode::kInvalidArgument, 1ms);  // client error: neither
  auto state = peer->Snapshot();
  EXPECT_EQ(state.successes, 1u);
  EXPECT_EQ(state.failures, 1u);
  ASSERT_TRUE(state.last_success && state.last_failure);
  EXPECT_EQ(*state.last_failure - *state.last_success, 1s);
  EXPECT_EQ(metrics->Total("omnirelay.peer.failures"), 1);

  auto fresh = Peer::Create(Desc("b"), {}, clock);
  for (int i = 1; i <= 100; ++i) fresh->RecordFeedback(core::StatusCode::kOk, i * 1ms);
  auto p = fresh->WindowPercentiles();
  EXPECT_EQ(p.samples, 100u);
  EXPECT_DOUBLE_EQ(p.p50_ms, 50);
  EXPECT_DOUBLE_EQ(p.p90_ms, 90);
  EXPECT_DOUBLE_EQ(p.p99_ms, 99);
  // The window keeps only the most recent kLatencyWindow samples.
  for (int i = 0; i < 300; ++i) fresh->RecordFeedback(core::StatusCode::kOk, 1000ms);
  p = fresh->WindowPercentiles();
  EXPECT_EQ(p.samples, Peer::kLatencyWindow);
  EXPECT_DOUBLE_EQ(p.p50_ms, 1000);
}

TEST(PeerTest, DescriptorProtocolHints) {
  auto d = Desc("a", "z1", {"h2", "h3"});
  EXPECT_TRUE(d.SupportsHttp3());
  EXPECT_TRUE(d.SupportsProtocol("h2"));
  EXPECT_FALSE(Desc("b").SupportsHttp3());
}

TEST(PeerMetricsTest, TableHasSeedNames) {
  std::set<std::string> names;
  for (const auto* d : PeerMetricDescriptors()) names.insert(std::string(d->name));
  for (const char* name :
       {"omnirelay.peer.inflight", "omnirelay.peer.successes", "omnirelay.peer.failures",
        "omnirelay.peer.lease_rejected", "omnirelay.peer.pool_exhausted",
        "omnirelay.peer.lease.duration", "omnirelay.peer.lease.healthy",
        "omnirelay.peer.lease.unhealthy", "omnirelay.peer.lease.pending_reassignments",
        "omnirelay.peer.lease_assignments", "omnirelay.peer.lease_heartbeats",
        "omnirelay.peer.lease_disconnects"}) {
    EXPECT_TRUE(names.count(name)) << name;
  }
}

}  // namespace
}  // namespace omnirelay::peers
