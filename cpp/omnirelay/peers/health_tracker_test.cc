#include "omnirelay/peers/health_tracker.h"

#include <gtest/gtest.h>

#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;

struct TrackerFixture {
  std::shared_ptr<core::ManualClock> clock = std::make_shared<core::ManualClock>();
  std::shared_ptr<core::MetricsRegistry> metrics = std::make_shared<core::MetricsRegistry>();
  std::shared_ptr<PeerLeaseHealthTracker> tracker =
      PeerLeaseHealthTracker::Create({.heartbeat_grace = 5s}, clock, metrics);
};

TEST(HealthTrackerTest, UnknownPeersAreEligible) {
  TrackerFixture f;
  EXPECT_TRUE(f.tracker->IsPeerEligible("never-seen"));
}

TEST(HealthTrackerTest, HeartbeatGraceExpiresByTimer) {
  TrackerFixture f;
  std::vector<std::pair<std::string, bool>> events;
  f.tracker->AddListener(
      [&](const std::string& id, bool eligible) { events.emplace_back(id, eligible); });
  auto handle = f.tracker->Handle("a");
  f.tracker->RecordHeartbeat("a");
  f.clock->Advance(3s);
  f.tracker->RecordHeartbeat("a");  // extends to t=8s
  f.clock->Advance(4s);             // t=7s
  EXPECT_TRUE(f.tracker->IsPeerEligible("a"));
  EXPECT_TRUE(handle->eligible());
  f.clock->Advance(1s);  // t=8s: expired, the timer flips it with no caller
  EXPECT_FALSE(handle->eligible());
  EXPECT_FALSE(f.tracker->IsPeerEligible("a"));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0], std::make_pair(std::string("a"), false));
  f.tracker->RecordHeartbeat("a");
  EXPECT_TRUE(handle->eligible());
  EXPECT_EQ(events.back(), std::make_pair(std::string("a"), true));
  EXPECT_EQ(f.metrics->Total("omnirelay.peer.lease_heartbeats", {{"rpc.peer", "a"}}), 3);
}

TEST(HealthTrackerTest, DisconnectLeasesMetadataAndDiagnostics) {
  TrackerFixture f;
  f.tracker->RecordHeartbeat("a");
  f.tracker->RecordHeartbeat("b");
  f.tracker->RecordLeaseAssigned("a");
  f.tracker->RecordLeaseAssigned("a");
  f.tracker->RecordLeaseAssigned("b");
  f.tracker->RecordLeaseReleased("b", /*requeued=*/true);
  f.tracker->SetMetadata("a", {{"region", "eu"}, {"build", "abc123"}});
  f.tracker->RecordDisconnect("a", "connection reset");
  EXPECT_FALSE(f.tracker->IsPeerEligible("a"));

  auto diagnostics = f.tracker->Diagnostics();
  EXPECT_EQ(diagnostics.eligible, 1);
  EXPECT_EQ(diagnostics.unhealthy, 1);
  EXPECT_EQ(diagnostics.pending_reassignments, 3);  // a's 2 active + b's requeue
  auto json = diagnostics.ToJson();
  EXPECT_EQ(json["eligible"], 1);
  EXPECT_EQ(json["unhealthy"], 1);
  EXPECT_EQ(json["pendingReassignments"], 3);
  ASSERT_EQ(json["peers"].size(), 2u);
  const auto& a = json["peers"][0];
  EXPECT_EQ(a["peerId"], "a");
  EXPECT_EQ(a["isHealthy"], false);
  EXPECT_EQ(a["disconnectReason"], "connection reset");
  EXPECT_EQ(a["activeLeases"], 0);
  EXPECT_EQ(a["metadata"]["build"], "abc123");
  EXPECT_TRUE(a["lastHeartbeat"].is_string());
  EXPECT_EQ(f.metrics->Total("omnirelay.peer.lease.unhealthy"), 1);
  EXPECT_EQ(f.metrics->Total("omnirelay.peer.lease.healthy"), 1);
  EXPECT_EQ(f.metrics->Total("omnirelay.peer.lease.pending_reassignments"), 3);
  EXPECT_EQ(f.metrics->Total("omnirelay.peer.lease_disconnects"), 1);
  EXPECT_EQ(f.metrics->Total("omnirelay.peer.lease_assignments"), 3);

  f.tracker->RecordReassignmentCompleted("a");
  f.tracker->RecordHeartbeat("a");
  diagnostics = f.tracker->Diagnostics();
  EXPECT_EQ(diagnostics.eligible, 2);
  EXPECT_EQ(diagnostics.pending_reassignments, 2);
}

TEST(HealthTrackerTest, DestroyedTrackerLeavesNoTimers) {
  auto clock = std::make_shared<core::ManualClock>();
  {
    auto tracker = PeerLeaseHealthTracker::Create({}, clock);
    tracker->RecordHeartbeat("a");
    EXPECT_EQ(clock->pending_timers(), 1u);
  }
  EXPECT_EQ(clock->pending_timers(), 0u);
}

}  // namespace
}  // namespace omnirelay::peers
