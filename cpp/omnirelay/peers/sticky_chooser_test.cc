#include "omnirelay/peers/sticky_chooser.h"

#include <gtest/gtest.h>

namespace omnirelay::peers {
namespace {

std::vector<StickyMember> Three() {
  return {{"worker-1", "127.0.0.1:1001"},
          {"worker-2", "127.0.0.1:1002"},
          {"worker-3", "127.0.0.1:1003"}};
}

// (Not `"w" + std::to_string(n)`: GCC 12 reports a false -Wrestrict there.)
std::string Name(const char* prefix, unsigned n) {
  std::string out(prefix);
  out += std::to_string(n);
  return out;
}

std::string Id(const StickyPick& pick) {
  EXPECT_EQ(pick.outcome, StickyOutcome::kInstance);
  return pick.member.id;
}

TEST(StickyChooserTest, NewSessionsTakeFreeInstancesInRotationOrder) {
  StickyChooser b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("a", {})), "worker-1");
  EXPECT_EQ(Id(b.PickSticky("b", {})), "worker-2");
  EXPECT_EQ(Id(b.PickSticky("c", {})), "worker-3");
  EXPECT_EQ(b.binding_count(), 3u);
}

TEST(StickyChooserTest, BoundSessionAlwaysReachesItsInstance) {
  StickyChooser b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("a", {})), "worker-1");
  EXPECT_EQ(Id(b.PickSticky("b", {})), "worker-2");
  for (int i = 0; i < 10; ++i) {
    StickyPick again = b.PickSticky("a", {});
    EXPECT_EQ(Id(again), "worker-1");
    EXPECT_FALSE(again.new_binding);
    EXPECT_EQ(Id(b.PickSticky("b", {})), "worker-2");
  }
}

TEST(StickyChooserTest, FourthSessionIsBusyAndNeverSharesAnInstance) {
  StickyChooser b;
  b.SetMembers(Three());
  b.PickSticky("a", {});
  b.PickSticky("b", {});
  b.PickSticky("c", {});
  EXPECT_EQ(b.PickSticky("d", {}).outcome, StickyOutcome::kBusy);
  EXPECT_EQ(b.bindings().count("d"), 0u);
  // The first three keep their instances.
  EXPECT_EQ(Id(b.PickSticky("a", {})), "worker-1");
}

TEST(StickyChooserTest, NoMembersMeansNoAvailableInstances) {
  StickyChooser b;
  EXPECT_EQ(b.PickSticky("a", {}).outcome, StickyOutcome::kNoInstances);
  EXPECT_EQ(b.PickRoundRobin({}).outcome, StickyOutcome::kNoInstances);
}

TEST(StickyChooserTest, TransportFailureTransfersSessionToNextInstance) {
  StickyChooser b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");
  EXPECT_EQ(b.ReportFailure("worker-1"), "s");
  EXPECT_EQ(b.binding_count(), 0u);
  StickyPick second = b.PickSticky("s", {"worker-1"});
  EXPECT_EQ(Id(second), "worker-2");
  EXPECT_TRUE(second.new_binding);
  EXPECT_TRUE(second.transferred);
  EXPECT_EQ(b.ReportFailure("worker-2"), "s");
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-3");  // next after the lost one
  EXPECT_EQ(b.ReportFailure("worker-3"), "s");
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");  // wraps around
}

TEST(StickyChooserTest, LeavingTheRegistryDropsBindingAndNextPickRotates) {
  StickyChooser b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");
  // worker-1 answered Shutdown: it unregisters, then comes back (same id and port).
  auto change = b.SetMembers({Three()[1], Three()[2]});
  ASSERT_EQ(change.removed.size(), 1u);
  EXPECT_EQ(change.removed[0].id, "worker-1");
  EXPECT_EQ(change.unbound, std::vector<std::string>{"s"});
  b.SetMembers(Three());
  StickyPick next = b.PickSticky("s", {});
  EXPECT_EQ(Id(next), "worker-2");
  EXPECT_TRUE(next.transferred);
}

TEST(StickyChooserTest, SameIdAtAnotherAddressIsAnotherProcess) {
  StickyChooser b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");
  auto moved = Three();
  moved[0].address = "127.0.0.1:2001";
  auto change = b.SetMembers(moved);
  EXPECT_EQ(change.unbound, std::vector<std::string>{"s"});
  ASSERT_EQ(change.added.size(), 1u);
  EXPECT_EQ(change.added[0].address, "127.0.0.1:2001");
}

TEST(StickyChooserTest, FailureOfUnboundInstanceEvictsNobody) {
  StickyChooser b;
  b.SetMembers(Three());
  b.PickSticky("a", {});
  EXPECT_EQ(b.ReportFailure("worker-3"), "");
  EXPECT_EQ(Id(b.PickSticky("a", {})), "worker-1");
}

TEST(StickyChooserTest, EveryInstanceFailedInThisCallIsUnavailableNotBusy) {
  StickyChooser b;
  b.SetMembers(Three());
  b.PickSticky("a", {});
  b.PickSticky("b", {});
  b.PickSticky("c", {});
  // a's worker-1 fails; the others are bound: nothing left for a.
  b.ReportFailure("worker-1");
  EXPECT_EQ(b.PickSticky("a", {"worker-1"}).outcome, StickyOutcome::kUnavailable);
  // A new session that tried nothing sees the free (unexcluded) worker-1.
  EXPECT_EQ(Id(b.PickSticky("d", {})), "worker-1");
}

TEST(StickyChooserTest, SessionThatLostItsInstanceWithNothingLeftIsUnavailable) {
  StickyChooser b;
  b.SetMembers(Three());
  b.PickSticky("s", {});
  b.SetMembers({});  // every worker stopped and unregistered
  EXPECT_EQ(b.PickSticky("s", {}).outcome, StickyOutcome::kUnavailable);
  EXPECT_EQ(b.PickSticky("new", {}).outcome, StickyOutcome::kNoInstances);
  b.SetMembers(Three());  // started again: service resumes
  EXPECT_EQ(b.PickSticky("s", {}).outcome, StickyOutcome::kInstance);
}

TEST(StickyChooserTest, BoundInstanceExcludedByCallerIsRebound) {
  StickyChooser b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");
  EXPECT_EQ(Id(b.PickSticky("s", {"worker-1"})), "worker-2");
  EXPECT_EQ(b.bindings().at("s"), "worker-2");
}

TEST(StickyChooserTest, RoundRobinCyclesAndSkipsExcluded) {
  StickyChooser b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickRoundRobin({})), "worker-1");
  EXPECT_EQ(Id(b.PickRoundRobin({})), "worker-2");
  EXPECT_EQ(Id(b.PickRoundRobin({})), "worker-3");
  EXPECT_EQ(Id(b.PickRoundRobin({})), "worker-1");
  EXPECT_EQ(Id(b.PickRoundRobin({"worker-2"})), "worker-3");
  // All failed in this call: stateless, so one is tried again (bounded by maxAttempts).
  EXPECT_EQ(b.PickRoundRobin({"worker-1", "worker-2", "worker-3"}).outcome,
            StickyOutcome::kInstance);
  EXPECT_EQ(b.binding_count(), 0u);  // round-robin never binds
}

TEST(StickyChooserTest, OccupancyInvariantUnderRandomChurn) {
  StickyChooser b;
  std::vector<StickyMember> all;
  for (unsigned i = 0; i < 5; ++i) all.push_back({Name("w", i), Name("a", i)});
  b.SetMembers(all);
  uint32_t x = 12345;
  auto next = [&x] { return x = x * 1103515245u + 12345u, (x >> 16) % 1000; };
  for (int step = 0; step < 5000; ++step) {
    const int op = static_cast<int>(next() % 10);
    const std::string session = Name("s", next() % 8);
    if (op < 6) {
      b.PickSticky(session, {});
    } else if (op < 8) {
      b.ReportFailure(Name("w", next() % 5));
    } else {
      std::vector<StickyMember> some;
      for (const auto& m : all) {
        if (next() % 4 != 0) some.push_back(m);
      }
      b.SetMembers(some);
    }
    // One session per instance, one instance per session, only members.
    std::set<std::string> ids;
    std::set<std::string> members;
    for (const auto& m : b.members()) members.insert(m.id);
    for (const auto& [s, id] : b.bindings()) {
      EXPECT_TRUE(ids.insert(id).second) << "instance " << id << " bound twice";
      EXPECT_TRUE(members.count(id)) << id << " is bound but not a member";
    }
  }
}

TEST(StickyChooserTest, SerialNamesOneIncarnation) {
  StickyChooser b;
  b.SetMembers(Three());
  const auto first = b.members();
  ASSERT_EQ(first.size(), 3u);
  EXPECT_NE(first[0].serial, 0u);
  EXPECT_NE(first[0].serial, first[1].serial);
  // Kept members keep their serial; a restart at another address gets a new one.
  auto moved = Three();
  moved[1].address = "127.0.0.1:2002";
  b.SetMembers(moved);
  const auto second = b.members();
  EXPECT_EQ(second[0].serial, first[0].serial);
  EXPECT_NE(second[1].serial, first[1].serial);
  // Leaving and coming back at the same address is another process too.
  b.SetMembers({Three()[0]});
  b.SetMembers(Three());
  EXPECT_NE(b.members()[2].serial, first[2].serial);
}

TEST(StickyChooserTest, StatusesAreTheGatewayContract) {
  StickyChooser b;
  auto none = b.PickSticky("a", {});
  EXPECT_EQ(StickyStatus(none, false), absl::ResourceExhaustedError("no available instances"));
  EXPECT_EQ(StickyStatus(none, true), absl::UnavailableError("backend service unavailable"));
  b.SetMembers({Three()[0]});
  EXPECT_TRUE(StickyStatus(b.PickSticky("a", {}), false).ok());
  EXPECT_EQ(StickyStatus(b.PickSticky("b", {}), false),
            absl::ResourceExhaustedError("all instances are busy"));
  EXPECT_EQ(StickyStatus(b.PickSticky("b", {"worker-1"}), true),
            absl::UnavailableError("backend service unavailable"));
}

}  // namespace
}  // namespace omnirelay::peers
