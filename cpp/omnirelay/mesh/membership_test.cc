// SWIM membership driven by a ManualClock over the simulated network:
// probe -> indirect probe -> suspect -> dead, refutation, incarnation
// ordering, leave, push-pull merge and partition healing, refusals.
#include "omnirelay/mesh/membership.h"

#include <gtest/gtest.h>

#include <map>

#include "omnirelay/mesh/peer_feed.h"
#include "omnirelay/mesh/sim_network.h"

namespace omnirelay::mesh {
namespace {

using std::chrono::milliseconds;

Options Fast() {
  Options o = Options::Test();  // 250 ms probes, 125 ms timeout, suspicion 2 x log10(n)
  o.cluster_name = "unit";
  return o;
}

class TestCluster {
 public:
  explicit TestCluster(SimNetworkOptions net = {})
      : clock_(std::make_shared<core::ManualClock>()),
        net_(std::make_shared<SimNetwork>(clock_, net)) {}

  std::shared_ptr<Membership> Add(const std::string& id, Options options = Fast(),
                                  std::string address = "") {
    if (address.empty()) address = id + ":7000";
    options.seed = seed_++;
    auto node = Membership::Create(
        LocalIdentity{id, address,
                      MemberMeta{{"r-" + id}, "east", "", {}, {{"grpc", "data-" + address}}}},
        options, clock_, net_->Endpoint(address));
    net_->Attach(address, node);
    nodes_[id] = node;
    return node;
  }
  // Every node knows every other node alive at incarnation 0.
  void Converge() {
    std::vector<MemberRecord> all;
    for (auto& [id, n] : nodes_) all.push_back(n->SelfRecord());
    for (auto& [id, n] : nodes_) n->Seed(all);
  }
  void StartAll() {
    for (auto& [id, n] : nodes_) n->Start();
  }
  // Advances in small steps so message latencies and timers interleave.
  void RunFor(core::Duration d) {
    const auto end = clock_->Now() + d;
    while (clock_->Now() < end) clock_->Advance(milliseconds(1));
  }
  // Runs until `done` holds (checked every 10 ms) or `limit` passes.
  bool RunUntil(const std::function<bool()>& done, core::Duration limit) {
    const auto end = clock_->Now() + limit;
    while (clock_->Now() < end) {
      if (done()) return true;
      RunFor(milliseconds(10));
    }
    return done();
  }
  MemberState StateOf(const std::string& viewer, const std::string& member) {
    auto m = nodes_.at(viewer)->Find(member);
    EXPECT_TRUE(m.has_value()) << viewer << " does not know " << member;
    return m ? m->record.state : MemberState::kDead;
  }
  bool AllSee(const std::string& member, MemberState state, const std::string& except = "") {
    for (auto& [id, n] : nodes_) {
      if (id == member || id == except) continue;
      auto m = n->Find(member);
      if (!m || m->record.state != state) return false;
    }
    return true;
  }
  core::ManualClock& clock() { return *clock_; }
  SimNetwork& net() { return *net_; }
  Membership& operator[](const std::string& id) { return *nodes_.at(id); }

 private:
  std::shared_ptr<core::ManualClock> clock_;
  std::shared_ptr<SimNetwork> net_;
  std::map<std::string, std::shared_ptr<Membership>> nodes_;
  std::uint64_t seed_ = 1;
};

TEST(LifeguardTest, SuspicionTimeoutFollowsMemberlistFormula) {
  Options lan = Options::Lan();  // suspicion_mult 4, max mult 6, 1 s interval
  EXPECT_EQ(SuspicionMinTimeout(lan, 1), std::chrono::seconds(4));
  EXPECT_EQ(SuspicionMinTimeout(lan, 10), std::chrono::seconds(4));
  EXPECT_EQ(SuspicionMinTimeout(lan, 1000), std::chrono::seconds(12));  // 4 * log10(1000)
  EXPECT_EQ(SuspicionMaxTimeout(lan, 1000), std::chrono::seconds(72));
  EXPECT_EQ(SuspicionConfirmationsExpected(lan, 1000), 2);
  EXPECT_EQ(SuspicionConfirmationsExpected(lan, 3), 0);  // too few members to confirm
  const auto min = std::chrono::seconds(12), max = std::chrono::seconds(72);
  EXPECT_EQ(SuspicionTimeout(min, max, 2, 0), max);
  EXPECT_EQ(SuspicionTimeout(min, max, 2, 2), min);
  const auto one = SuspicionTimeout(min, max, 2, 1);  // 72 - log(2)/log(3) * 60 = 34.1 s
  EXPECT_GT(one, std::chrono::seconds(34));
  EXPECT_LT(one, std::chrono::seconds(35));
  EXPECT_EQ(RetransmitLimit(lan, 9), 4);
  EXPECT_EQ(RetransmitLimit(lan, 1000), 16);  // 4 * ceil(log10(1001))
  EXPECT_EQ(PushPullInterval(lan, 32), std::chrono::seconds(30));
  EXPECT_EQ(PushPullInterval(lan, 100), std::chrono::seconds(90));  // ceil(log2(100/32)) + 1 = 3
}

TEST(MembershipTest, IndirectProbeKeepsAMemberAliveWhenOnlyTheDirectPathFails) {
  TestCluster c;
  for (auto id : {"a", "b", "c", "d"}) c.Add(id);
  c.Converge();
  c.StartAll();
  c.net().Partition({"a:7000"}, {"d:7000"});  // a <-> d cut; b and c reach both
  c.RunFor(std::chrono::seconds(5));
  EXPECT_EQ(c.StateOf("a", "d"), MemberState::kAlive);
  EXPECT_GT(c["a"].stats().indirect_probes.load(), 0u);
  EXPECT_EQ(c["a"].stats().probes_failed.load(), 0u);
  EXPECT_EQ(c["a"].stats().suspicions_raised.load(), 0u);
}

TEST(MembershipTest, ProbeThenIndirectThenSuspectThenDead) {
  TestCluster c;
  for (auto id : {"a", "b", "c", "d", "e"}) c.Add(id);
  std::vector<std::string> seen;
  c["a"].AddListener([&](const MemberEvent& e) {
    if (e.member.id == "e" && e.kind != MemberEvent::Kind::kHeartbeat) {
      seen.push_back(std::string(MemberEventKindName(e.kind)));
    }
  });
  c.Converge();
  c.StartAll();
  c.RunFor(std::chrono::seconds(1));
  c.net().SetDown("e:7000", true);  // crash
  const auto crashed = c.clock().Now();
  ASSERT_TRUE(
      c.RunUntil([&] { return c.AllSee("e", MemberState::kDead); }, std::chrono::seconds(5)));
  const auto detection = c.clock().Now() - crashed;
  // One probe interval to be probed, one to fail, the suspicion timeout
  // (2 x 250 ms at n = 5), a little dissemination.
  EXPECT_LT(detection, milliseconds(2000));
  EXPECT_EQ(seen, (std::vector<std::string>{"suspect", "dead"}));
  std::uint64_t indirect = 0, failed = 0, raised = 0;
  for (auto id : {"a", "b", "c", "d"}) {
    indirect += c[id].stats().indirect_probes.load();
    failed += c[id].stats().probes_failed.load();
    raised += c[id].stats().suspicions_raised.load();
  }
  EXPECT_GT(indirect, 0u);
  EXPECT_GT(failed, 0u);
  EXPECT_GT(raised, 0u);
  // The survivors stay alive for each other.
  for (auto id : {"a", "b", "c", "d"}) EXPECT_TRUE(c.AllSee(id, MemberState::kAlive, "e")) << id;
}

TEST(MembershipTest, SuspectedMemberRefutesWithAHigherIncarnation) {
  TestCluster c;
  for (auto id : {"a", "b", "c", "d"}) c.Add(id);
  c.Converge();
  c.StartAll();
  c.RunFor(milliseconds(500));
  // b is unreachable just long enough to be suspected, then comes back
  // before the suspicion (2 x 250 ms at n = 4) can expire everywhere.
  c.net().Partition({"b:7000"}, {"a:7000", "c:7000", "d:7000"});
  ASSERT_TRUE(c.RunUntil(
      [&] {
        for (auto id : {"a", "c", "d"}) {
          if (c[id].Find("b")->record.state == MemberState::kSuspect) return true;
        }
        return false;
      },
      std::chrono::seconds(3)));
  c.net().Heal();
  ASSERT_TRUE(
      c.RunUntil([&] { return c.AllSee("b", MemberState::kAlive); }, std::chrono::seconds(10)));
  EXPECT_GE(c["b"].incarnation(), 1u);
  EXPECT_GE(c["b"].stats().suspicions_refuted.load(), 1u);
  for (auto id : {"a", "c", "d"})
    EXPECT_EQ(c[id].Find("b")->record.incarnation, c["b"].incarnation());
}

Message From(const std::string& from, std::vector<MemberRecord> updates) {
  Message m;
  m.type = MessageType::kGossip;
  m.cluster = "unit";
  m.from = from;
  m.from_address = from + ":7000";
  m.updates = std::move(updates);
  return m;
}

TEST(MembershipTest, IncarnationNumbersOrderStatements) {
  TestCluster c;
  auto& a = *c.Add("a");
  c.Add("x");
  c.Converge();
  a.Start();
  auto rec = [](MemberState s, std::uint64_t inc) {
    return MemberRecord{"x", "x:7000", {}, s, inc, "z"};
  };
  auto state = [&] { return a.Find("x")->record; };
  a.HandleMessage(From("z", {rec(MemberState::kAlive, 5)}));
  EXPECT_EQ(state().incarnation, 5u);
  a.HandleMessage(From("z", {rec(MemberState::kSuspect, 4)}));  // older: ignored
  EXPECT_EQ(state().state, MemberState::kAlive);
  a.HandleMessage(From("z", {rec(MemberState::kSuspect, 5)}));  // same: suspect wins over alive
  EXPECT_EQ(state().state, MemberState::kSuspect);
  a.HandleMessage(From("z", {rec(MemberState::kAlive, 5)}));  // same: alive does not refute
  EXPECT_EQ(state().state, MemberState::kSuspect);
  a.HandleMessage(From("z", {rec(MemberState::kAlive, 6)}));  // newer: refuted
  EXPECT_EQ(state().state, MemberState::kAlive);
  a.HandleMessage(From("z", {rec(MemberState::kDead, 6)}));
  EXPECT_EQ(state().state, MemberState::kDead);
  a.HandleMessage(From("z", {rec(MemberState::kAlive, 6)}));  // a dead incarnation stays dead
  EXPECT_EQ(state().state, MemberState::kDead);
  a.HandleMessage(From("z", {rec(MemberState::kAlive, 7)}));  // rejoin with a higher one
  EXPECT_EQ(state().state, MemberState::kAlive);
  EXPECT_EQ(state().incarnation, 7u);
  // Statements about ourselves are refuted, never accepted.
  a.HandleMessage(From("z", {MemberRecord{"a", "a:7000", {}, MemberState::kDead, 3, "z"}}));
  EXPECT_EQ(a.incarnation(), 4u);
  EXPECT_EQ(a.stats().suspicions_refuted.load(), 1u);
}

TEST(MembershipTest, GracefulLeaveIsSeenAsLeftNotDead) {
  TestCluster c;
  for (auto id : {"a", "b", "c", "d"}) c.Add(id);
  c.Converge();
  c.StartAll();
  c.RunFor(milliseconds(500));
  c["c"].Leave();
  c.net().SetDown("c:7000", true);  // the process exits right after
  ASSERT_TRUE(c.RunUntil([&] { return c.AllSee("c", MemberState::kLeft); }, milliseconds(100)));
  c.RunFor(std::chrono::seconds(5));  // never turns into a suspicion or a death
  EXPECT_TRUE(c.AllSee("c", MemberState::kLeft));
  for (auto id : {"a", "b", "d"}) EXPECT_EQ(c[id].stats().suspicions_raised.load(), 0u) << id;
}

TEST(PeerFeedTest, SelectorMatchesRoleRegionZoneAndEveryLabel) {
  MemberMeta meta{{"backend", "store"}, "east", "east-a", {{"tier", "gold"}, {"x", "1"}}, {}};
  EXPECT_TRUE(MemberSelector{}.Matches(meta));
  EXPECT_TRUE((MemberSelector{"store", "east", "east-a", {{"tier", "gold"}}}.Matches(meta)));
  EXPECT_FALSE((MemberSelector{"gateway", "", "", {}}.Matches(meta)));
  EXPECT_FALSE((MemberSelector{"", "west", "", {}}.Matches(meta)));
  EXPECT_FALSE((MemberSelector{"", "", "east-b", {}}.Matches(meta)));
  EXPECT_FALSE((MemberSelector{"", "", "", {{"tier", "silver"}}}.Matches(meta)));
  EXPECT_FALSE((MemberSelector{"", "", "", {{"missing", "1"}}}.Matches(meta)));
}

TEST(PeerFeedTest, SelectsAliveMembersWithAnEndpointForTheTransport) {
  auto member = [](std::string id, MemberState state, std::map<std::string, std::string> ep) {
    Member m;
    m.record.id = std::move(id);
    m.record.state = state;
    m.record.meta.roles = {"backend"};
    m.record.meta.endpoints = std::move(ep);
    return m;
  };
  std::vector<Member> members = {member("c", MemberState::kAlive, {{"grpc", "c:1"}}),
                                 member("a", MemberState::kAlive, {{"grpc", "a:1"}}),
                                 member("s", MemberState::kSuspect, {{"grpc", "s:1"}}),
                                 member("d", MemberState::kDead, {{"grpc", "d:1"}}),
                                 member("l", MemberState::kLeft, {{"grpc", "l:1"}}),
                                 member("h", MemberState::kAlive, {{"http", "h:1"}})};
  EXPECT_EQ(SelectDataPeers(members, {"backend", "", "", {}}, "grpc"),
            (std::vector<DataPeer>{{"a", "a:1"}, {"c", "c:1"}}));
  EXPECT_EQ(SelectDataPeers(members, {}, "http"), (std::vector<DataPeer>{{"h", "h:1"}}));
  EXPECT_TRUE(SelectDataPeers(members, {"gateway", "", "", {}}, "grpc").empty());
}

// The feed follows a join, a crash and a graceful leave, and never hands
// out an unchanged list twice.
TEST(PeerFeedTest, FeedFollowsJoinCrashAndLeave) {
  TestCluster c;
  for (auto id : {"a", "b", "c", "d"}) c.Add(id);
  std::vector<std::vector<DataPeer>> lists;
  FeedPeerList(c["a"], {}, "grpc",
               [&](const std::vector<DataPeer>& peers) { lists.push_back(peers); });
  ASSERT_EQ(lists.size(), 1u);  // self, at once
  ASSERT_EQ(lists[0].size(), 1u);
  EXPECT_EQ(lists[0][0].id, "a");
  EXPECT_EQ(lists[0][0].address, "data-a:7000");
  // The member's locality rides along (the geo chooser routes on it).
  EXPECT_FALSE(lists[0][0].region.empty());
  EXPECT_EQ(lists[0][0].region, c["a"].SelfRecord().meta.region);
  EXPECT_EQ(lists[0][0].zone, c["a"].SelfRecord().meta.zone);
  auto ids = [&] {
    std::vector<std::string> out;
    for (const auto& p : lists.back()) out.push_back(p.id);
    return out;
  };
  using Ids = std::vector<std::string>;
  c["b"].Seed({c["c"].SelfRecord()});
  c["c"].Seed({c["b"].SelfRecord()});
  c["b"].Start();
  c["c"].Start();
  c["a"].Start({"b:7000"});
  ASSERT_TRUE(c.RunUntil([&] { return ids() == Ids{"a", "b", "c"}; }, std::chrono::seconds(5)));
  c["d"].Start({"b:7000"});  // a join
  ASSERT_TRUE(c.RunUntil(
      [&] {
        return ids() == Ids{"a", "b", "c", "d"};
      },
      std::chrono::seconds(5)));
  c.net().SetDown("c:7000", true);  // kill -9
  ASSERT_TRUE(c.RunUntil([&] { return ids() == Ids{"a", "b", "d"}; }, std::chrono::seconds(5)));
  c["d"].Leave();  // graceful
  c.net().SetDown("d:7000", true);
  ASSERT_TRUE(c.RunUntil([&] { return ids() == Ids{"a", "b"}; }, std::chrono::seconds(2)));
  for (size_t i = 1; i < lists.size(); ++i) EXPECT_NE(lists[i], lists[i - 1]) << i;
}

TEST(MembershipTest, JoinThroughASeedMergesBothTablesByPushPull) {
  TestCluster c;
  for (auto id : {"a", "b", "c", "d"}) c.Add(id);
  // Two groups that know nothing of each other: {a, b} and {c, d}.
  c["a"].Seed({c["b"].SelfRecord()});
  c["b"].Seed({c["a"].SelfRecord()});
  c["c"].Seed({c["d"].SelfRecord()});
  c["d"].Seed({c["c"].SelfRecord()});
  c["a"].Start();
  c["b"].Start();
  c["d"].Start();
  c["c"].Start({"a:7000"});  // c joins through a
  ASSERT_TRUE(c.RunUntil(
      [&] {
        for (auto id : {"a", "b", "c", "d"}) {
          if (c[id].NumAlive() != 4) return false;
        }
        return true;
      },
      std::chrono::seconds(5)));
  EXPECT_GT(c["a"].stats().push_pull_syncs.load(), 0u);
}

TEST(MembershipTest, PartitionedSidesDeclareEachOtherDeadThenConverge) {
  TestCluster c;
  std::vector<std::string> east = {"a:7000", "b:7000", "c:7000"}, west = {"d:7000", "e:7000"};
  for (auto id : {"a", "b", "c", "d", "e"}) c.Add(id);
  c.Converge();
  c.StartAll();
  c.RunFor(milliseconds(500));
  c.net().Partition(east, west);
  ASSERT_TRUE(c.RunUntil(
      [&] {
        return c.StateOf("a", "d") == MemberState::kDead &&
               c.StateOf("d", "a") == MemberState::kDead;
      },
      std::chrono::seconds(10)));
  c.net().Heal();
  ASSERT_TRUE(c.RunUntil(
      [&] {
        for (auto id : {"a", "b", "c", "d", "e"}) {
          if (c[id].NumAlive() != 5) return false;
        }
        return true;
      },
      std::chrono::seconds(15)));
}

TEST(MembershipTest, WrongClusterNameIsRefusedWithAClearError) {
  TestCluster c;
  c.Add("a");
  Options other = Fast();
  other.cluster_name = "prod";
  auto& x = *c.Add("x", other);
  c["a"].Start();
  x.Start({"a:7000"});
  c.RunFor(milliseconds(200));
  EXPECT_NE(x.refusal().find("cluster name mismatch"), std::string::npos) << x.refusal();
  EXPECT_NE(x.refusal().find("'unit'"), std::string::npos) << x.refusal();
  EXPECT_GE(c["a"].stats().dropped_cluster.load(), 1u);
  EXPECT_FALSE(c["a"].Find("x").has_value());
  EXPECT_EQ(x.NumAlive(), 1u);
}

TEST(MembershipTest, NodeIdCollisionIsRefused) {
  TestCluster c;
  c.Add("a");
  c.Add("b");
  c.Converge();
  c["a"].Start();
  c["b"].Start();
  // A second process that claims id "a" from another address.
  auto dup = Membership::Create(LocalIdentity{"a", "other:7000", {}}, Fast(),
                                std::shared_ptr<core::Clock>(&c.clock(), [](core::Clock*) {}),
                                c.net().Endpoint("other:7000"));
  c.net().Attach("other:7000", dup);
  dup->Start({"b:7000"});
  c.RunFor(milliseconds(200));
  EXPECT_NE(dup->refusal().find("node id collision: 'a' is already used by the member at a:7000"),
            std::string::npos)
      << dup->refusal();
  EXPECT_EQ(c["b"].Find("a")->record.address, "a:7000");
  EXPECT_GE(c["b"].stats().conflicts.load(), 1u);
}

}  // namespace
}  // namespace omnirelay::mesh
