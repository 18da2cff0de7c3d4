// Chooser behaviour, driven through a PeerListCoordinator (the way every
// caller uses them) with a ManualClock and fixed seeds.
#include "omnirelay/peers/choosers/choosers.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <thread>

#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;
using testing::Desc;
using testing::Fixture;

std::map<std::string, int> Distribution(PeerListCoordinator& coordinator, int picks,
                                        const core::RequestMeta& meta = {}) {
  std::map<std::string, int> counts;
  for (int i = 0; i < picks; ++i) {
    auto lease = coordinator.Acquire(meta);
    if (!lease.ok()) ADD_FAILURE() << lease.status();
    ++counts[lease->peer()->id()];
    lease->Release(core::StatusCode::kOk, 1ms);
  }
  return counts;
}

TEST(ChooserRegistryTest, AllNamesResolveAndUnknownIsInvalidArgument) {
  std::vector<std::string> expected = {"fewest-pending", "hash",       "least-latency", "preferred",
                                       "round-robin",    "two-random", "sticky"};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(ChooserNames(), expected);
  for (const auto& name : expected) {
    auto chooser = CreateChooser(name);
    ASSERT_TRUE(chooser.ok()) << name;
    EXPECT_EQ((*chooser)->name(), name);
  }
  auto unknown = CreateChooser("random-walk");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core::ErrorCode(unknown.status()), "unknown-peer-chooser");
}

TEST(ChooserTest, RoundRobinIsExactlyEven) {
  Fixture f;
  auto coordinator = f.Make("round-robin", 10);
  auto counts = Distribution(*coordinator, 100000);
  ASSERT_EQ(counts.size(), 10u);
  for (const auto& [id, n] : counts) EXPECT_EQ(n, 10000) << id;
}

// Uniform choosers over 100k picks: every peer within 5% of the mean
// (binomial sd is ~0.95% of the mean; 5% is > 5 sd).
void ExpectEven(const std::map<std::string, int>& counts, int peers, int picks) {
  ASSERT_EQ(static_cast<int>(counts.size()), peers);
  double mean = static_cast<double>(picks) / peers;
  for (const auto& [id, n] : counts) EXPECT_NEAR(n, mean, mean * 0.05) << id;
}

TEST(ChooserTest, TwoRandomIsEven) {
  Fixture f;
  auto coordinator = f.Make("two-random", 10);
  ExpectEven(Distribution(*coordinator, 100000), 10, 100000);
}

TEST(ChooserTest, FewestPendingIsEvenWithUniformTies) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 10);
  ExpectEven(Distribution(*coordinator, 100000), 10, 100000);
}

TEST(ChooserTest, FewestPendingAlwaysPicksTheLeastLoaded) {
  Fixture f;
  auto coordinator = f.Make("fewest-pending", 5);
  std::vector<PeerLease> held;
  // 5 rounds of 5 held leases: every peer gets one lease per round.
  for (int round = 1; round <= 5; ++round) {
    for (int i = 0; i < 5; ++i) held.push_back(*coordinator->Acquire({}));
    for (const auto& state : coordinator->PeerStates()) EXPECT_EQ(state.inflight, round);
  }
  // Free two leases of p3: the next two picks must both go to p3.
  int freed = 0;
  for (auto& lease : held) {
    if (freed < 2 && lease.peer()->id() == "p3") {
      lease.Release(core::StatusCode::kOk, 1ms);
      ++freed;
    }
  }
  EXPECT_EQ(coordinator->Acquire({})->peer()->id(), "p3");
  EXPECT_EQ(coordinator->Acquire({})->peer()->id(), "p3");
}

TEST(ChooserTest, TwoRandomBalancesHeldLoad) {
  Fixture f;
  auto coordinator = f.Make("two-random", 10);
  std::vector<PeerLease> held;
  for (int i = 0; i < 1000; ++i) held.push_back(*coordinator->Acquire({}));
  int lo = 1 << 30, hi = 0;
  for (const auto& state : coordinator->PeerStates()) {
    lo = std::min(lo, state.inflight);
    hi = std::max(hi, state.inflight);
  }
  EXPECT_LE(hi - lo, 10);  // P2C keeps the spread tiny (random would be ~±30)
}

// ProbeOrder sorts by load while other threads change it: every order must
// still be a permutation of the snapshot's indices (a sort whose comparator
// reads live counts is not a strict weak order and can run off the range).
TEST(ChooserTest, ProbeOrderIsAPermutationWhileLoadsChange) {
  for (const char* name : {"two-random", "fewest-pending", "least-latency"}) {
    Fixture f;
    auto coordinator = f.Make(name, 64);
    auto snapshot = coordinator->snapshot();
    std::atomic<bool> stop{false};
    std::thread churn([&] {
      std::vector<PeerLease> held;
      for (int i = 0; !stop.load(std::memory_order_relaxed) && i < 2'000'000; ++i) {
        if (held.size() < 200 && (i % 3) != 0) {
          if (auto lease = coordinator->Acquire({}); lease.ok()) held.push_back(*std::move(lease));
        } else if (!held.empty()) {
          held.back().Release(core::StatusCode::kOk, 1ms);
          held.pop_back();
        }
      }
      for (auto& lease : held) lease.Release(core::StatusCode::kOk, 1ms);
    });
    std::vector<int> order;
    bool permutation = true;
    for (int round = 0; round < 20'000 && permutation; ++round) {
      coordinator->chooser().ProbeOrder(*snapshot, {}, -1, &order);
      std::vector<int> sorted = order;
      std::sort(sorted.begin(), sorted.end());
      for (int i = 0; i < 64 && permutation; ++i) {
        permutation = sorted.size() == 64 && sorted[static_cast<std::size_t>(i)] == i;
      }
    }
    stop = true;
    churn.join();
    EXPECT_TRUE(permutation) << name;
  }
}

TEST(ChooserTest, SameSeedSameSequence) {
  auto sequence = [] {
    Fixture f;
    ChooserOptions seeded;
    seeded.seed = 7;
    auto coordinator = f.Make("two-random", 7, 0, seeded);
    std::vector<std::string> ids;
    for (int i = 0; i < 50; ++i) {
      auto lease = coordinator->Acquire({});
      ids.push_back(lease->peer()->id());
      lease->Release(core::StatusCode::kOk, 1ms);
    }
    return ids;
  };
  EXPECT_EQ(sequence(), sequence());
}

std::map<std::string, std::string> Owners(PeerListCoordinator& coordinator, int keys) {
  std::map<std::string, std::string> owners;
  for (int k = 0; k < keys; ++k) {
    core::RequestMeta meta;
    meta.shard_key = "key-" + std::to_string(k);
    auto lease = coordinator.Acquire(meta);
    owners[meta.shard_key] = lease->peer()->id();
    lease->Release(core::StatusCode::kOk, 1ms);
  }
  return owners;
}

TEST(ChooserTest, HashIsStickyAndMovesAboutOneNthOnAdd) {
  Fixture f;
  auto coordinator = f.Make("hash", 10);
  auto before = Owners(*coordinator, 20000);
  EXPECT_EQ(before, Owners(*coordinator, 20000));  // sticky
  std::map<std::string, int> load;
  for (const auto& [key, owner] : before) ++load[owner];
  for (const auto& [id, n] : load) EXPECT_NEAR(n, 2000, 2000 * 0.35) << id;

  ASSERT_TRUE(coordinator->AddPeer(Desc("p10")).ok());
  auto after = Owners(*coordinator, 20000);
  int moved = 0;
  for (const auto& [key, owner] : after) {
    if (owner != before[key]) {
      ++moved;
      EXPECT_EQ(owner, "p10");  // only keys the newcomer takes move
    }
  }
  double fraction = moved / 20000.0;
  EXPECT_GT(fraction, 0.5 / 11);
  EXPECT_LT(fraction, 1.6 / 11);
}

TEST(ChooserTest, HashRemovalMovesOnlyTheRemovedPeersKeys) {
  Fixture f;
  auto coordinator = f.Make("hash", 10);
  auto before = Owners(*coordinator, 20000);
  ASSERT_TRUE(coordinator->RemovePeer("p4").ok());
  auto after = Owners(*coordinator, 20000);
  int moved = 0;
  for (const auto& [key, owner] : after) {
    if (before[key] == "p4") {
      EXPECT_NE(owner, "p4");
      ++moved;
    } else {
      EXPECT_EQ(owner, before[key]) << key;
    }
  }
  EXPECT_NEAR(moved / 20000.0, 0.1, 0.05);
}

TEST(ChooserTest, HashUsesRoutingKeyThenNamedHeader) {
  Fixture f;
  auto coordinator = f.Make("hash", 5);
  core::RequestMeta by_header;
  by_header.headers.Set("Session-Id", "user-42");
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    auto lease = coordinator->Acquire(by_header);
    seen.insert(lease->peer()->id());
  }
  EXPECT_EQ(seen.size(), 1u);
  core::RequestMeta by_routing_key;
  by_routing_key.routing_key = "user-42";
  EXPECT_EQ(coordinator->Acquire(by_routing_key)->peer()->id(), *seen.begin());
  // No key: round-robin over all peers.
  auto counts = Distribution(*coordinator, 50);
  EXPECT_EQ(counts.size(), 5u);
}

TEST(ChooserTest, HashSkipsIneligibleOwnerAndReturnsWhenItRecovers) {
  Fixture f;
  auto coordinator = f.Make("hash", 5);
  core::RequestMeta meta;
  meta.shard_key = "tenant-9";
  std::string owner = coordinator->Acquire(meta)->peer()->id();
  ASSERT_TRUE(coordinator->SetPeerStatus(owner, PeerStatus::kUnavailable).ok());
  std::string fallback = coordinator->Acquire(meta)->peer()->id();
  EXPECT_NE(fallback, owner);
  EXPECT_EQ(coordinator->Acquire(meta)->peer()->id(), fallback);  // stable fallback
  ASSERT_TRUE(coordinator->SetPeerStatus(owner, PeerStatus::kAvailable).ok());
  EXPECT_EQ(coordinator->Acquire(meta)->peer()->id(), owner);
}

TEST(ChooserTest, PreferredSubsetFirstThenFallback) {
  Fixture f;
  PeerListCoordinatorOptions options;
  options.chooser = "preferred";
  options.chooser_options.preferred_protocol = "h3";
  options.chooser_options.seed = 1;
  auto coordinator = *PeerListCoordinator::Create(options, f.clock, f.metrics);
  ASSERT_TRUE(coordinator->AddPeer(Desc("h2-a", "z1", {"h2"})).ok());
  ASSERT_TRUE(coordinator->AddPeer(Desc("h3-a", "z1", {"h2", "h3"})).ok());
  ASSERT_TRUE(coordinator->AddPeer(Desc("h2-b", "z2", {"h2"})).ok());
  ASSERT_TRUE(coordinator->AddPeer(Desc("h3-b", "z2", {"h3"})).ok());
  auto counts = Distribution(*coordinator, 1000);
  EXPECT_EQ(counts["h3-a"], 500);
  EXPECT_EQ(counts["h3-b"], 500);
  ASSERT_TRUE(coordinator->SetPeerStatus("h3-a", PeerStatus::kUnavailable).ok());
  counts = Distribution(*coordinator, 100);
  EXPECT_EQ(counts["h3-b"], 100);  // remaining preferred peer takes it all
  ASSERT_TRUE(coordinator->SetPeerStatus("h3-b", PeerStatus::kUnavailable).ok());
  counts = Distribution(*coordinator, 100);
  EXPECT_EQ(counts["h2-a"], 50);  // fallback to the rest
  EXPECT_EQ(counts["h2-b"], 50);
  ASSERT_TRUE(coordinator->SetPeerStatus("h3-b", PeerStatus::kAvailable).ok());
  EXPECT_EQ(Distribution(*coordinator, 10)["h3-b"], 10);
}

TEST(ChooserTest, PreferredZoneAndBusyFallback) {
  Fixture f;
  PeerListCoordinatorOptions options;
  options.chooser = "preferred";
  options.chooser_options.preferred_zone = "z1";
  options.peer_defaults.max_inflight = 1;
  auto coordinator = *PeerListCoordinator::Create(options, f.clock, f.metrics);
  ASSERT_TRUE(coordinator->AddPeer(Desc("local", "z1")).ok());
  ASSERT_TRUE(coordinator->AddPeer(Desc("remote", "z2")).ok());
  auto first = *coordinator->Acquire({});
  EXPECT_EQ(first.peer()->id(), "local");
  auto second = *coordinator->Acquire({});  // local is at its cap
  EXPECT_EQ(second.peer()->id(), "remote");
}

TEST(ChooserTest, LeastLatencyMovesTrafficOffSlowPeer) {
  Fixture f;
  auto coordinator = f.Make("least-latency", 3);
  std::map<std::string, core::Duration> latency = {{"p0", 1ms}, {"p1", 1ms}, {"p2", 100ms}};
  std::map<std::string, int> counts;
  for (int i = 0; i < 3000; ++i) {
    auto lease = *coordinator->Acquire({});
    ++counts[lease.peer()->id()];
    lease.Release(core::StatusCode::kOk, latency[lease.peer()->id()]);
  }
  EXPECT_LT(counts["p2"], 30);  // < 1%: it only wins while unmeasured
  EXPECT_GT(counts["p0"], 1300);
  EXPECT_GT(counts["p1"], 1300);

  // Control-plane RTT feedback alone shifts preference: p0 turns slow.
  auto p0 = coordinator->FindPeer("p0");
  for (int i = 0; i < 20; ++i) p0->RecordFeedback(core::StatusCode::kOk, 500ms);
  counts.clear();
  for (int i = 0; i < 1000; ++i) {
    auto lease = *coordinator->Acquire({});
    ++counts[lease.peer()->id()];
    lease.Release(core::StatusCode::kOk, latency[lease.peer()->id()]);
  }
  // p0 now loses every pair it is drawn into; p1 wins 2 of the 3 pairs.
  EXPECT_LT(counts["p0"], 10);
  EXPECT_GT(counts["p1"], 600);
}

class EligibilityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EligibilityTest, EveryChooserSkipsPeersWithoutRecentHeartbeat) {
  Fixture f;
  auto tracker = PeerLeaseHealthTracker::Create({.heartbeat_grace = 2s}, f.clock, f.metrics);
  ChooserOptions chooser_options;
  chooser_options.preferred_ids = {"p1", "p3"};  // both expire: fallback, then p3 returns
  auto coordinator = f.Make(GetParam(), 4, 0, chooser_options, tracker);
  for (int i = 0; i < 4; ++i) tracker->RecordHeartbeat("p" + std::to_string(i));
  f.clock->Advance(1s);
  tracker->RecordHeartbeat("p0");
  tracker->RecordHeartbeat("p2");
  f.clock->Advance(1500ms);  // p1, p3 expired (grace 2s), p0, p2 fresh
  ASSERT_FALSE(tracker->IsPeerEligible("p1"));
  core::RequestMeta meta;
  for (int i = 0; i < 400; ++i) {
    meta.shard_key = "k" + std::to_string(i);
    auto lease = coordinator->Acquire(meta);
    ASSERT_TRUE(lease.ok());
    std::string id = lease->peer()->id();
    EXPECT_TRUE(id == "p0" || id == "p2") << GetParam() << " picked " << id;
    lease->Release(core::StatusCode::kOk, 1ms);
  }
  tracker->RecordHeartbeat("p3");  // fresh heartbeat: eligible again
  std::set<std::string> seen;
  for (int i = 0; i < 400; ++i) {
    meta.shard_key = "k" + std::to_string(i);
    auto lease = coordinator->Acquire(meta);
    seen.insert(lease->peer()->id());
    lease->Release(core::StatusCode::kOk, 1ms);
  }
  EXPECT_TRUE(seen.count("p3")) << GetParam();
  EXPECT_FALSE(seen.count("p1")) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(AllChoosers, EligibilityTest,
                         ::testing::Values("round-robin", "two-random", "fewest-pending",
                                           "preferred", "hash", "least-latency"));

}  // namespace
}  // namespace omnirelay::peers
