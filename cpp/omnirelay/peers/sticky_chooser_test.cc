// The `sticky` chooser, driven through a real PeerListCoordinator (the way
// the session gateway uses it) with a ManualClock: binding, occupancy,
// rotation, rebinding after failures, departures and ineligible peers, and
// the coordinator's contention rules on a bound peer.
#include "omnirelay/peers/sticky_chooser.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;
using testing::Fixture;

// (Not `"w" + std::to_string(n)`: GCC 12 reports a false -Wrestrict there.)
std::string Name(const char* prefix, unsigned n) {
  std::string out(prefix);
  out += std::to_string(n);
  return out;
}

PeerDescriptor Worker(const std::string& id, const std::string& address) {
  PeerDescriptor d;
  d.id = id;
  d.endpoint = address;
  d.status = PeerStatus::kAvailable;
  return d;
}

std::vector<PeerDescriptor> Three() {
  return {Worker("worker-1", "127.0.0.1:1001"), Worker("worker-2", "127.0.0.1:1002"),
          Worker("worker-3", "127.0.0.1:1003")};
}

core::RequestMeta Session(const std::string& session, std::vector<std::string> exclude = {}) {
  core::RequestMeta meta;
  if (!session.empty()) meta.headers.Set("session-id", session);
  for (auto& id : exclude) meta.headers.Add(kStickyExcludeHeader, std::move(id));
  return meta;
}

struct Sticky {
  explicit Sticky(int cap = 0, int occupancy = 1, bool breaker = true,
                  std::vector<PeerDescriptor> peers = Three()) {
    ChooserOptions options;
    options.sticky_occupancy = occupancy;
    coordinator = fixture.Make("sticky", 0, cap, options, nullptr, breaker);
    chooser = dynamic_cast<StickyChooser*>(&coordinator->chooser());
    chooser->SetListener([this](const StickyEvent& e) { events.push_back(e); });
    EXPECT_TRUE(coordinator->ReplacePeers(std::move(peers)).ok());
  }
  // Acquires and releases OK; the peer id, or the refusal's outcome name.
  std::string Call(const std::string& session, std::vector<std::string> exclude = {}) {
    auto lease = coordinator->Acquire(Session(session, std::move(exclude)));
    if (!lease.ok()) return "refused";
    std::string id = lease->peer()->id();
    lease->Release(core::StatusCode::kOk, 1ms);
    return id;
  }
  StickyOutcome Refusal(const std::string& session, std::vector<std::string> exclude = {}) {
    auto lease = coordinator->Acquire(Session(session, std::move(exclude)));
    EXPECT_FALSE(lease.ok()) << lease->peer()->id();
    return chooser->LastOutcome();
  }

  Fixture fixture;
  std::unique_ptr<PeerListCoordinator> coordinator;
  StickyChooser* chooser = nullptr;
  std::vector<StickyEvent> events;
};

TEST(StickyChooserTest, IsABuiltinChooserWithItsOptions) {
  ChooserOptions options;
  options.sticky_header = "X-Tenant";
  options.sticky_occupancy = 2;
  auto made = CreateChooser("sticky", options);
  ASSERT_TRUE(made.ok());
  auto* sticky = dynamic_cast<StickyChooser*>(made->get());
  ASSERT_NE(sticky, nullptr);
  EXPECT_EQ(sticky->name(), "sticky");
  EXPECT_EQ(sticky->key_header(), "x-tenant");
  EXPECT_EQ(sticky->occupancy(), 2);
}

TEST(StickyChooserTest, NewSessionsTakeFreeInstancesInRotationOrder) {
  // Joined in reverse order: the rotation is by id, not by arrival.
  Sticky s(0, 1, true, {Three()[2], Three()[0], Three()[1]});
  EXPECT_EQ(s.Call("a"), "worker-1");
  EXPECT_EQ(s.Call("b"), "worker-2");
  EXPECT_EQ(s.Call("c"), "worker-3");
  EXPECT_EQ(s.chooser->binding_count(), 3u);
  ASSERT_EQ(s.events.size(), 3u);
  EXPECT_EQ(s.events[2].kind, StickyEvent::Kind::kBound);
  EXPECT_EQ(s.events[2].bindings, 3u);
  EXPECT_FALSE(s.events[2].transferred);
}

TEST(StickyChooserTest, BoundSessionAlwaysReachesItsInstance) {
  Sticky s;
  EXPECT_EQ(s.Call("a"), "worker-1");
  EXPECT_EQ(s.Call("b"), "worker-2");
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(s.Call("a"), "worker-1");
    EXPECT_EQ(s.Call("b"), "worker-2");
  }
  EXPECT_EQ(s.events.size(), 2u);  // two bindings, nothing else happened
  // Every call was a lease: the kit's own statistics saw them.
  EXPECT_EQ(s.coordinator->FindPeer("worker-1")->SuccessCount(), 11u);
  EXPECT_EQ(s.coordinator->FindPeer("worker-3")->SuccessCount(), 0u);
}

TEST(StickyChooserTest, FourthSessionIsBusyAndNeverSharesAnInstance) {
  Sticky s;
  s.Call("a");
  s.Call("b");
  s.Call("c");
  EXPECT_EQ(s.Refusal("d"), StickyOutcome::kBusy);
  EXPECT_EQ(StickyStatus(StickyOutcome::kBusy, false),
            absl::ResourceExhaustedError("all instances are busy"));
  EXPECT_EQ(s.chooser->bindings().count("d"), 0u);
  EXPECT_EQ(s.Call("a"), "worker-1");
}

TEST(StickyChooserTest, OccupancyTwoPutsTwoSessionsOnEachInstance) {
  Sticky s(0, 2);
  std::map<std::string, int> per_peer;
  for (unsigned i = 0; i < 6; ++i) ++per_peer[s.Call(Name("s", i))];
  EXPECT_EQ(per_peer,
            (std::map<std::string, int>{{"worker-1", 2}, {"worker-2", 2}, {"worker-3", 2}}));
  EXPECT_EQ(s.Refusal("s6"), StickyOutcome::kBusy);
}

TEST(StickyChooserTest, NoPeersMeansNoAvailableInstances) {
  Sticky s(0, 1, true, {});
  // The coordinator refuses an empty list itself (`peer-list-empty`).
  auto refused = s.coordinator->Acquire(Session("a"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.chooser->OutcomeWithoutPeers(Session("a")), StickyOutcome::kNoInstances);
  EXPECT_EQ(s.chooser->OutcomeWithoutPeers(Session("")), StickyOutcome::kNoInstances);
  EXPECT_EQ(s.chooser->OutcomeWithoutPeers(Session("a", {"worker-1"})),
            StickyOutcome::kUnavailable);
}

TEST(StickyChooserTest, TransportFailureTransfersSessionToNextInstance) {
  Sticky s;
  EXPECT_EQ(s.Call("s"), "worker-1");
  EXPECT_EQ(s.chooser->ReportFailure("worker-1"), std::vector<std::string>{"s"});
  EXPECT_EQ(s.chooser->binding_count(), 0u);
  EXPECT_EQ(s.events.back().reason, StickyEvent::Reason::kFailure);
  EXPECT_EQ(s.Call("s", {"worker-1"}), "worker-2");
  EXPECT_TRUE(s.events.back().transferred);
  s.chooser->ReportFailure("worker-2");
  EXPECT_EQ(s.Call("s"), "worker-3");  // next after the lost one
  s.chooser->ReportFailure("worker-3");
  EXPECT_EQ(s.Call("s"), "worker-1");  // wraps around
}

TEST(StickyChooserTest, LeavingTheListDropsBindingAndNextPickRotates) {
  Sticky s;
  EXPECT_EQ(s.Call("s"), "worker-1");
  // worker-1 answered Shutdown: it unregisters, then comes back (same id and port).
  ASSERT_TRUE(s.coordinator->ReplacePeers({Three()[1], Three()[2]}).ok());
  ASSERT_EQ(s.events.size(), 2u);
  EXPECT_EQ(s.events[1].kind, StickyEvent::Kind::kUnbound);
  EXPECT_EQ(s.events[1].reason, StickyEvent::Reason::kLeft);
  EXPECT_EQ(s.events[1].session, "s");
  ASSERT_TRUE(s.coordinator->ReplacePeers(Three()).ok());
  EXPECT_EQ(s.Call("s"), "worker-2");
  EXPECT_TRUE(s.events.back().transferred);
}

TEST(StickyChooserTest, SameIdAtAnotherEndpointIsAnotherProcess) {
  Sticky s;
  EXPECT_EQ(s.Call("s"), "worker-1");
  // transport::PeerPool replaces a peer whose address changed: remove, add.
  ASSERT_TRUE(s.coordinator->RemovePeer("worker-1").ok());
  ASSERT_TRUE(s.coordinator->AddPeer(Worker("worker-1", "127.0.0.1:2001")).ok());
  EXPECT_EQ(s.chooser->binding_count(), 0u);
  EXPECT_EQ(s.events.back().reason, StickyEvent::Reason::kLeft);
}

TEST(StickyChooserTest, FailureOfUnboundInstanceEvictsNobody) {
  Sticky s;
  s.Call("a");
  EXPECT_TRUE(s.chooser->ReportFailure("worker-3").empty());
  EXPECT_EQ(s.Call("a"), "worker-1");
}

TEST(StickyChooserTest, EveryInstanceFailedInThisCallIsUnavailableNotBusy) {
  Sticky s;
  s.Call("a");
  s.Call("b");
  s.Call("c");
  // a's worker-1 fails; the others are bound: nothing left for a.
  s.chooser->ReportFailure("worker-1");
  EXPECT_EQ(s.Refusal("a", {"worker-1"}), StickyOutcome::kUnavailable);
  // A new session that tried nothing sees the free (unexcluded) worker-1.
  EXPECT_EQ(s.Call("d"), "worker-1");
}

TEST(StickyChooserTest, SessionThatLostItsInstanceWithNothingLeftIsUnavailable) {
  Sticky s;
  s.Call("s");
  ASSERT_TRUE(s.coordinator->ReplacePeers({}).ok());  // every worker unregistered
  EXPECT_FALSE(s.coordinator->Acquire(Session("s")).ok());
  EXPECT_EQ(s.chooser->OutcomeWithoutPeers(Session("s")), StickyOutcome::kUnavailable);
  EXPECT_EQ(s.chooser->OutcomeWithoutPeers(Session("new")), StickyOutcome::kNoInstances);
  ASSERT_TRUE(s.coordinator->ReplacePeers(Three()).ok());  // started again
  EXPECT_EQ(s.Call("s"), "worker-2");                      // after the one it lost
}

TEST(StickyChooserTest, BoundInstanceExcludedByCallerIsRebound) {
  Sticky s;
  EXPECT_EQ(s.Call("s"), "worker-1");
  EXPECT_EQ(s.Call("s", {"worker-1"}), "worker-2");
  EXPECT_EQ(s.chooser->bindings().at("s"), "worker-2");
}

TEST(StickyChooserTest, OpenBreakerRebindsTheSessionAndKeepsNewOnesAway) {
  Sticky s;  // breaker: CircuitBreakerOptions::ForTests (3 failures, 100 ms)
  EXPECT_EQ(s.Call("s"), "worker-1");
  for (int i = 0; i < 3; ++i) {
    auto lease = s.coordinator->Acquire(Session("s"));
    ASSERT_TRUE(lease.ok());
    EXPECT_EQ(lease->peer()->id(), "worker-1");
    lease->Release(core::StatusCode::kUnavailable, 1ms);
  }
  ASSERT_FALSE(s.coordinator->FindPeer("worker-1")->IsEligible());  // open
  // The session moves on its next call, to the next instance.
  EXPECT_EQ(s.Call("s"), "worker-2");
  EXPECT_EQ(s.events[1].kind, StickyEvent::Kind::kUnbound);
  EXPECT_EQ(s.events[1].reason, StickyEvent::Reason::kIneligible);
  EXPECT_TRUE(s.events.back().transferred);
  // While it is open nobody is bound to worker-1, although it is free.
  EXPECT_EQ(s.Call("t"), "worker-3");
  EXPECT_EQ(s.Refusal("u"), StickyOutcome::kBusy);
  for (int i = 0; i < 10; ++i) EXPECT_NE(s.Call(""), "worker-1");  // keyless calls too
  // Half-open after the delay: a new session may probe it.
  s.fixture.clock->Advance(150ms);
  EXPECT_EQ(s.Call("u"), "worker-1");
}

TEST(StickyChooserTest, EveryInstanceIneligibleIsUnavailable) {
  Sticky s;
  for (const auto& peer : Three()) {
    ASSERT_TRUE(s.coordinator->SetPeerStatus(peer.id, PeerStatus::kUnavailable).ok());
  }
  EXPECT_EQ(s.Refusal("a"), StickyOutcome::kUnavailable);
  EXPECT_EQ(s.Refusal(""), StickyOutcome::kUnavailable);
  EXPECT_EQ(StickyStatus(StickyOutcome::kUnavailable, false),
            absl::UnavailableError("backend service unavailable"));
}

TEST(StickyChooserTest, BoundPeerAtItsCapIsBusyWithoutDeadlineNeverSpills) {
  Sticky s(/*cap=*/1);
  auto held = s.coordinator->Acquire(Session("s"));
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(held->peer()->id(), "worker-1");
  // Rule 4: no deadline, the session's peer is full -> ResourceExhausted at
  // once, never another instance (that would break the session).
  auto second = s.coordinator->Acquire(Session("s"));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.chooser->LastOutcome(), StickyOutcome::kAtCapacity);
  EXPECT_EQ(s.fixture.Total("omnirelay.peer.pool_exhausted"), 1);
  EXPECT_EQ(s.fixture.Total("omnirelay.peer.lease_rejected"), 1);
  EXPECT_EQ(s.chooser->bindings().at("s"), "worker-1");
  held->Release(core::StatusCode::kOk, 1ms);
}

TEST(StickyChooserTest, BoundPeerAtItsCapWaitsForTheSlotWithADeadline) {
  Sticky s(/*cap=*/1);
  auto held = s.coordinator->Acquire(Session("s"));
  ASSERT_TRUE(held.ok());
  std::string got;
  std::thread waiter([&] {
    core::RequestMeta meta = Session("s");
    meta.time_to_live = 10s;
    auto lease = s.coordinator->Acquire(meta);
    got = lease.ok() ? lease->peer()->id() : std::string(lease.status().message());
  });
  ASSERT_TRUE(testing::Eventually([&] { return s.coordinator->waiting() == 1; }));
  held->Release(core::StatusCode::kOk, 1ms);  // wakes the waiter (rule 5)
  waiter.join();
  EXPECT_EQ(got, "worker-1");
}

TEST(StickyChooserTest, KeylessCallsRotateAndSkipExcluded) {
  Sticky s;
  EXPECT_EQ(s.Call(""), "worker-1");
  EXPECT_EQ(s.Call(""), "worker-2");
  EXPECT_EQ(s.Call(""), "worker-3");
  EXPECT_EQ(s.Call(""), "worker-1");
  EXPECT_EQ(s.Call("", {"worker-2"}), "worker-3");
  // All failed in this call: stateless, so one is tried again (bounded by attempts).
  EXPECT_NE(s.Call("", {"worker-1", "worker-2", "worker-3"}), "refused");
  EXPECT_EQ(s.chooser->binding_count(), 0u);  // keyless calls never bind
}

TEST(StickyChooserTest, OccupancyInvariantUnderRandomChurn) {
  Sticky s(0, 1, true, {});
  std::vector<PeerDescriptor> all;
  for (unsigned i = 0; i < 5; ++i) all.push_back(Worker(Name("w", i), Name("a", i)));
  ASSERT_TRUE(s.coordinator->ReplacePeers(all).ok());
  uint32_t x = 12345;
  auto next = [&x] { return x = x * 1103515245u + 12345u, (x >> 16) % 1000; };
  for (int step = 0; step < 5000; ++step) {
    const int op = static_cast<int>(next() % 10);
    const std::string session = Name("s", next() % 8);
    if (op < 6) {
      s.Call(session);
    } else if (op < 8) {
      s.chooser->ReportFailure(Name("w", next() % 5));
    } else {
      std::vector<PeerDescriptor> some;
      for (const auto& m : all) {
        if (next() % 4 != 0) some.push_back(m);
      }
      ASSERT_TRUE(s.coordinator->ReplacePeers(some).ok());
    }
    // One session per instance, one instance per session, only members.
    std::set<std::string> ids;
    for (const auto& [session_id, id] : s.chooser->bindings()) {
      EXPECT_TRUE(ids.insert(id).second) << "instance " << id << " bound twice";
      EXPECT_NE(s.coordinator->FindPeer(id), nullptr) << id << " is bound but not a member";
    }
  }
}

// Many threads leasing for overlapping sessions while the list churns and
// instances fail (run under TSan: peers_test is labelled tsan). Occupancy
// holds at every observation and at the end.
TEST(StickyChooserTest, ConcurrentPicksChurnAndFailuresKeepOccupancy) {
  Sticky s(0, 1, false, {});
  std::vector<PeerDescriptor> all;
  for (unsigned i = 0; i < 6; ++i) all.push_back(Worker(Name("w", i), Name("a", i)));
  ASSERT_TRUE(s.coordinator->ReplacePeers(all).ok());
  s.chooser->SetListener(nullptr);  // events would race on the vector
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (unsigned i = 0; i < 3000; ++i) {
        auto lease = s.coordinator->Acquire(Session(Name("s", (i * 7 + t) % 10)));
        if (lease.ok()) lease->Release(core::StatusCode::kOk, 1ms);
        if (i % 97 == 0) s.chooser->ReportFailure(Name("w", (i + t) % 6));
      }
    });
  }
  std::thread churn([&] {
    unsigned n = 0;
    while (!stop.load()) {
      std::vector<PeerDescriptor> some;
      for (const auto& m : all) {
        if ((++n % 5) != 0) some.push_back(m);
      }
      EXPECT_TRUE(s.coordinator->ReplacePeers(some).ok());
      std::set<std::string> ids;
      for (const auto& [session, id] : s.chooser->bindings()) {
        EXPECT_TRUE(ids.insert(id).second) << "instance " << id << " bound twice";
      }
      std::this_thread::sleep_for(1ms);
    }
  });
  for (auto& t : threads) t.join();
  stop.store(true);
  churn.join();
  // A pick racing a removal may bind on the snapshot it started with; the
  // next membership change (or the session's next pick) ends such a binding.
  ASSERT_TRUE(s.coordinator->ReplacePeers({all[0], all[2], all[4]}).ok());
  std::set<std::string> ids;
  for (const auto& [session, id] : s.chooser->bindings()) {
    EXPECT_TRUE(ids.insert(id).second) << "instance " << id << " bound twice";
    EXPECT_NE(s.coordinator->FindPeer(id), nullptr) << id << " is bound but not a member";
  }
}

TEST(StickyChooserTest, StatusesAreTheGatewayContract) {
  EXPECT_EQ(StickyStatus(StickyOutcome::kNoInstances, false),
            absl::ResourceExhaustedError("no available instances"));
  EXPECT_EQ(StickyStatus(StickyOutcome::kNoInstances, true),
            absl::UnavailableError("backend service unavailable"));
  EXPECT_TRUE(StickyStatus(StickyOutcome::kInstance, false).ok());
  EXPECT_EQ(StickyStatus(StickyOutcome::kAtCapacity, false),
            absl::ResourceExhaustedError("all instances are busy"));
  EXPECT_EQ(StickyStatus(StickyOutcome::kUnavailable, true),
            absl::UnavailableError("backend service unavailable"));
}

}  // namespace
}  // namespace omnirelay::peers
