#include "omnirelay/gateway/balancer.h"

#include <gtest/gtest.h>

namespace omnirelay::gateway {
namespace {

std::vector<Member> Three() {
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

std::string Id(const Pick& pick) {
  EXPECT_EQ(pick.outcome, PickOutcome::kInstance);
  return pick.member.id;
}

TEST(BalancerTest, NewSessionsTakeFreeInstancesInRotationOrder) {
  Balancer b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("a", {})), "worker-1");
  EXPECT_EQ(Id(b.PickSticky("b", {})), "worker-2");
  EXPECT_EQ(Id(b.PickSticky("c", {})), "worker-3");
  EXPECT_EQ(b.binding_count(), 3u);
}

TEST(BalancerTest, BoundSessionAlwaysReachesItsInstance) {
  Balancer b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("a", {})), "worker-1");
  EXPECT_EQ(Id(b.PickSticky("b", {})), "worker-2");
  for (int i = 0; i < 10; ++i) {
    Pick again = b.PickSticky("a", {});
    EXPECT_EQ(Id(again), "worker-1");
    EXPECT_FALSE(again.new_binding);
    EXPECT_EQ(Id(b.PickSticky("b", {})), "worker-2");
  }
}

TEST(BalancerTest, FourthSessionIsBusyAndNeverSharesAnInstance) {
  Balancer b;
  b.SetMembers(Three());
  b.PickSticky("a", {});
  b.PickSticky("b", {});
  b.PickSticky("c", {});
  EXPECT_EQ(b.PickSticky("d", {}).outcome, PickOutcome::kBusy);
  EXPECT_EQ(b.bindings().count("d"), 0u);
  // The first three keep their instances.
  EXPECT_EQ(Id(b.PickSticky("a", {})), "worker-1");
}

TEST(BalancerTest, NoMembersMeansNoAvailableInstances) {
  Balancer b;
  EXPECT_EQ(b.PickSticky("a", {}).outcome, PickOutcome::kNoInstances);
  EXPECT_EQ(b.PickRoundRobin({}).outcome, PickOutcome::kNoInstances);
}

TEST(BalancerTest, TransportFailureTransfersSessionToNextInstance) {
  Balancer b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");
  EXPECT_EQ(b.ReportFailure("worker-1"), "s");
  EXPECT_EQ(b.binding_count(), 0u);
  Pick second = b.PickSticky("s", {"worker-1"});
  EXPECT_EQ(Id(second), "worker-2");
  EXPECT_TRUE(second.new_binding);
  EXPECT_TRUE(second.transferred);
  EXPECT_EQ(b.ReportFailure("worker-2"), "s");
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-3");  // next after the lost one
  EXPECT_EQ(b.ReportFailure("worker-3"), "s");
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");  // wraps around
}

TEST(BalancerTest, LeavingTheRegistryDropsBindingAndNextPickRotates) {
  Balancer b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");
  // worker-1 answered Shutdown: it unregisters, then comes back (same id and port).
  auto change = b.SetMembers({Three()[1], Three()[2]});
  ASSERT_EQ(change.removed.size(), 1u);
  EXPECT_EQ(change.removed[0].id, "worker-1");
  EXPECT_EQ(change.unbound, std::vector<std::string>{"s"});
  b.SetMembers(Three());
  Pick next = b.PickSticky("s", {});
  EXPECT_EQ(Id(next), "worker-2");
  EXPECT_TRUE(next.transferred);
}

TEST(BalancerTest, SameIdAtAnotherAddressIsAnotherProcess) {
  Balancer b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");
  auto moved = Three();
  moved[0].address = "127.0.0.1:2001";
  auto change = b.SetMembers(moved);
  EXPECT_EQ(change.unbound, std::vector<std::string>{"s"});
  ASSERT_EQ(change.added.size(), 1u);
  EXPECT_EQ(change.added[0].address, "127.0.0.1:2001");
}

TEST(BalancerTest, FailureOfUnboundInstanceEvictsNobody) {
  Balancer b;
  b.SetMembers(Three());
  b.PickSticky("a", {});
  EXPECT_EQ(b.ReportFailure("worker-3"), "");
  EXPECT_EQ(Id(b.PickSticky("a", {})), "worker-1");
}

TEST(BalancerTest, EveryInstanceFailedInThisCallIsUnavailableNotBusy) {
  Balancer b;
  b.SetMembers(Three());
  b.PickSticky("a", {});
  b.PickSticky("b", {});
  b.PickSticky("c", {});
  // a's worker-1 fails; the others are bound: nothing left for a.
  b.ReportFailure("worker-1");
  EXPECT_EQ(b.PickSticky("a", {"worker-1"}).outcome, PickOutcome::kUnavailable);
  // A new session that tried nothing sees the free (unexcluded) worker-1.
  EXPECT_EQ(Id(b.PickSticky("d", {})), "worker-1");
}

TEST(BalancerTest, SessionThatLostItsInstanceWithNothingLeftIsUnavailable) {
  Balancer b;
  b.SetMembers(Three());
  b.PickSticky("s", {});
  b.SetMembers({});  // every worker stopped and unregistered
  EXPECT_EQ(b.PickSticky("s", {}).outcome, PickOutcome::kUnavailable);
  EXPECT_EQ(b.PickSticky("new", {}).outcome, PickOutcome::kNoInstances);
  b.SetMembers(Three());  // started again: service resumes
  EXPECT_EQ(b.PickSticky("s", {}).outcome, PickOutcome::kInstance);
}

TEST(BalancerTest, BoundInstanceExcludedByCallerIsRebound) {
  Balancer b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickSticky("s", {})), "worker-1");
  EXPECT_EQ(Id(b.PickSticky("s", {"worker-1"})), "worker-2");
  EXPECT_EQ(b.bindings().at("s"), "worker-2");
}

TEST(BalancerTest, RoundRobinCyclesAndSkipsExcluded) {
  Balancer b;
  b.SetMembers(Three());
  EXPECT_EQ(Id(b.PickRoundRobin({})), "worker-1");
  EXPECT_EQ(Id(b.PickRoundRobin({})), "worker-2");
  EXPECT_EQ(Id(b.PickRoundRobin({})), "worker-3");
  EXPECT_EQ(Id(b.PickRoundRobin({})), "worker-1");
  EXPECT_EQ(Id(b.PickRoundRobin({"worker-2"})), "worker-3");
  // All failed in this call: stateless, so one is tried again (bounded by maxAttempts).
  EXPECT_EQ(b.PickRoundRobin({"worker-1", "worker-2", "worker-3"}).outcome,
            PickOutcome::kInstance);
  EXPECT_EQ(b.binding_count(), 0u);  // round-robin never binds
}

TEST(BalancerTest, OccupancyInvariantUnderRandomChurn) {
  Balancer b;
  std::vector<Member> all;
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
      std::vector<Member> some;
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

}  // namespace
}  // namespace omnirelay::gateway
