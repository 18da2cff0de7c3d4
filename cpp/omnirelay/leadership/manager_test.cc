// LeadershipManager on the in-memory store and a ManualClock: every timer
// (renewal, lease expiry, priority delays) runs inside ManualClock::Advance,
// so each step below is deterministic.
#include "omnirelay/leadership/manager.h"

#include <gtest/gtest.h>

#include "omnirelay/coord/memory_backend.h"

namespace omnirelay::leadership {
namespace {

using namespace std::chrono_literals;

class ManagerTest : public ::testing::Test {
 protected:
  std::shared_ptr<LeadershipManager> Node(std::string id, std::vector<Candidacy> candidacies,
                                          int promotion_priority = 1) {
    auto options = LeadershipOptions::Fast();  // 2 s lease, 1 s bootstrap step, 200 ms failover
    options.node_id = std::move(id);
    options.candidacies = std::move(candidacies);
    options.promotion_priority = promotion_priority;
    options.observed_scopes = {"region/west", "region/east"};
    auto store = std::make_shared<coord::LeadershipStore>(backend_, clock_);
    stores_.push_back(store);
    auto node = LeadershipManager::Create(options, store, clock_, &metrics_);
    EXPECT_TRUE(node->Start().ok());
    return node;
  }
  // Moves time in 10 ms ticks, so timers set by timers fire at their time.
  void Step(core::Duration total) {
    for (core::Duration done{}; done < total; done += 10ms) clock_->Advance(10ms);
  }
  static std::string LeaderOf(const LeadershipManager& node, std::string_view scope) {
    auto leader = node.directory()->Get(scope);
    return leader ? leader->node : "-";
  }

  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  std::shared_ptr<coord::MemoryBackend> backend_ = coord::MemoryBackend::Create(clock_);
  core::MetricsRegistry metrics_;
  std::vector<std::shared_ptr<coord::LeadershipStore>> stores_;
};

TEST_F(ManagerTest, DeclaredLeaderWinsOnBootstrapEvenIfItStartsLast) {
  auto b = Node("b", {{"global", 1}});
  Step(500ms);  // b is half-way through its 1 s priority delay
  auto a = Node("a", {{"global", 0}});
  EXPECT_TRUE(a->Held("global").has_value());
  Step(5s);
  EXPECT_TRUE(a->Held("global").has_value()) << "renewals keep it";
  EXPECT_FALSE(b->Held("global").has_value());
  EXPECT_EQ(LeaderOf(*b, "global"), "a");
  EXPECT_TRUE(a->ready_for_leader_work());
}

TEST_F(ManagerTest, CrashedLeaderIsReplacedAfterItsLeaseAndTheTokenGrows) {
  auto a = Node("a", {{"global", 0}});
  auto b = Node("b", {{"global", 1}});
  const auto old = a->Held("global");
  ASSERT_TRUE(old.has_value());
  a->Freeze();  // kill -9: no resign, no revoke
  Step(1900ms);
  EXPECT_EQ(LeaderOf(*b, "global"), "a") << "the lease still runs";
  Step(100ms);  // lease expired (at most 2 s after the last renewal)
  EXPECT_EQ(LeaderOf(*b, "global"), "-");
  Step(200ms);  // b's failover delay: priority 1 x 200 ms
  auto now = b->Held("global");
  ASSERT_TRUE(now.has_value());
  EXPECT_GT(now->fencing_token, old->fencing_token);
  // The crashed leader's token is dead in the store.
  auto stale = stores_[0]->FencedPut(*old, "shard-map", "from-a");
  EXPECT_EQ(stale.status().code(), core::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(b->FencedPut("global", "shard-map", "from-b").ok());
  EXPECT_GE(metrics_.Total("omnirelay.leadership.changes", {{"scope", "global"}}), 3);
}

TEST_F(ManagerTest, RegionalLeaderIsPromotedToGlobalWhenTheGlobalLeaderIsLost) {
  auto g = Node("global-leader", {{"global", 0}});
  auto w = Node("west-leader", {{"region/west", 0}}, /*promotion_priority=*/1);
  auto e = Node("east-leader", {{"region/east", 0}}, /*promotion_priority=*/2);
  EXPECT_EQ(LeaderOf(*w, "global"), "global-leader");
  EXPECT_EQ(LeaderOf(*g, "region/west"), "west-leader");
  EXPECT_EQ(LeaderOf(*g, "region/east"), "east-leader");
  g->Freeze();
  Step(2s + 200ms);  // lease + west's promotion delay
  EXPECT_TRUE(w->Held("global").has_value());
  EXPECT_TRUE(w->Held("region/west").has_value()) << "it keeps its region";
  EXPECT_FALSE(e->Held("global").has_value());
  Step(1s);
  EXPECT_EQ(LeaderOf(*e, "global"), "west-leader");
}

TEST_F(ManagerTest, PromoteHandsOverCleanlyAndFencesTheOldLeader) {
  auto g = Node("global-leader", {{"global", 0}});
  auto w = Node("west-leader", {{"region/west", 0}});
  auto e = Node("east-leader", {{"region/east", 0}});
  const auto old = g->Held("global");
  ASSERT_TRUE(old.has_value());
  // Any node may ask; the hand-over happens through the store.
  ASSERT_TRUE(e->Promote("global", "west-leader").ok());
  EXPECT_FALSE(g->Held("global").has_value()) << "the old leader resigned";
  auto now = w->Held("global");
  ASSERT_TRUE(now.has_value());
  EXPECT_GT(now->fencing_token, old->fencing_token);
  EXPECT_EQ(LeaderOf(*e, "global"), "west-leader");
  // The old leader's writes: refused by the manager, and by the store.
  EXPECT_EQ(g->FencedPut("global", "k", "v").status().code(),
            core::StatusCode::kFailedPrecondition);
  EXPECT_EQ(stores_[0]->FencedPut(*old, "k", "v").status().code(),
            core::StatusCode::kFailedPrecondition);
  EXPECT_EQ(stores_[0]->fenced_writes_rejected(), 1);
  // The old leader, a priority-0 candidate, does not take it back.
  Step(10s);
  EXPECT_EQ(LeaderOf(*g, "global"), "west-leader");
  EXPECT_EQ(LeaderOf(*g, "global"), "west-leader");
}

TEST_F(ManagerTest, AFreshlyPromotedLeaderThatCrashesFailsOverAtLeaseExpiry) {
  // The promotion marker holds other candidates off for 2 x TTL; once the
  // target has won, it clears the marker so its own crash is a normal failover.
  auto g = Node("global-leader", {{"global", 0}});
  auto w = Node("west-leader", {{"region/west", 0}});
  auto e = Node("east-leader", {{"region/east", 0}}, /*promotion_priority=*/2);
  ASSERT_TRUE(e->Promote("global", "west-leader").ok());
  ASSERT_TRUE(w->Held("global").has_value());
  w->Freeze();
  Step(2s + 50ms);  // w's lease has expired; global-leader (priority 0) campaigns at once
  EXPECT_TRUE(g->Held("global").has_value()) << LeaderOf(*e, "global");
}

TEST_F(ManagerTest, UnreachableStoreLapsesLeadershipAtLeaseExpiryThenRecovers) {
  auto a = Node("a", {{"global", 0}});
  const auto old = a->Held("global");
  ASSERT_TRUE(old.has_value());
  backend_->SetUnavailable(true);
  Step(1900ms);
  EXPECT_TRUE(a->Held("global").has_value()) << "still within the lease";
  Step(100ms);
  EXPECT_FALSE(a->Held("global").has_value()) << "lapsed at the lease deadline";
  EXPECT_FALSE(a->ready_for_leader_work());
  EXPECT_GE(metrics_.Total("omnirelay.leadership.lease_renew.failures"), 1);
  backend_->SetUnavailable(false);
  Step(2s);
  auto again = a->Held("global");
  ASSERT_TRUE(again.has_value());
  EXPECT_GT(again->fencing_token, old->fencing_token);
  EXPECT_TRUE(a->ready_for_leader_work());
}

TEST_F(ManagerTest, ResignOnStopHandsOverAtOnce) {
  auto a = Node("a", {{"shard/orders/1", 0}});
  auto b = Node("b", {{"shard/orders/1", 1}});
  ASSERT_TRUE(a->Held("shard/orders/1").has_value());
  a->Stop();
  EXPECT_EQ(LeaderOf(*b, "shard/orders/1"), "-");
  Step(200ms);
  EXPECT_TRUE(b->Held("shard/orders/1").has_value());
}

TEST_F(ManagerTest, ScopesViewShowsCandidacyTokensAndLeaseExpiry) {
  auto a = Node("a", {{"global", 0}, {"region/west", 2}});
  auto scopes = a->Scopes();
  bool saw_global = false;
  for (const auto& scope : scopes) {
    if (scope.scope != "global") continue;
    saw_global = true;
    EXPECT_TRUE(scope.held);
    EXPECT_TRUE(scope.candidate);
    EXPECT_EQ(scope.priority, 0);
    ASSERT_TRUE(scope.leader.has_value());
    EXPECT_EQ(scope.leader->node, "a");
    EXPECT_GT(scope.fencing_token, 0);
    ASSERT_TRUE(scope.lease_expires_at.has_value());
    EXPECT_EQ(*scope.lease_expires_at, clock_->Now() + 2s);
  }
  EXPECT_TRUE(saw_global);
  EXPECT_EQ(metrics_.Total("omnirelay.leadership.is_leader", {{"scope", "global"}}), 1);
}

TEST_F(ManagerTest, InvalidCandidacyIsRejectedAtStart) {
  auto options = LeadershipOptions::Fast();
  options.node_id = "a";
  options.candidacies = {{"regions/west", 0}};
  auto node = LeadershipManager::Create(
      options, std::make_shared<coord::LeadershipStore>(backend_, clock_), clock_);
  EXPECT_EQ(node->Start().code(), core::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace omnirelay::leadership

namespace omnirelay::leadership {
namespace {

// The hooks the node builds spans and leader-outbound wake-ups from: one
// on_change per observed change (with the previous leader and both tokens),
// the directory's listener only on a real change, and a shared directory.
TEST(LeadershipHooksTest, OnChangeAndDirectoryListenerFireOncePerChange) {
  auto clock = std::make_shared<core::ManualClock>();
  auto backend = coord::MemoryBackend::Create(clock);
  auto directory = std::make_shared<LeaderDirectory>();
  std::vector<std::pair<std::string, std::string>> heard;  // (scope, leader) from the directory
  directory->AddListener([&](const std::string& scope, const std::optional<LeaderInfo>& leader) {
    heard.emplace_back(scope, leader ? leader->node : "-");
  });
  std::vector<LeadershipChange> changes;
  auto make = [&](std::string id, int priority, bool observer) {
    auto options = LeadershipOptions::Fast();
    options.node_id = std::move(id);
    options.candidacies = {{"global", priority}};
    if (observer) {
      options.directory = directory;
      options.on_change = [&](const LeadershipChange& change) { changes.push_back(change); };
    }
    auto node = LeadershipManager::Create(
        options, std::make_shared<coord::LeadershipStore>(backend, clock), clock, nullptr);
    EXPECT_TRUE(node->Start().ok());
    return node;
  };
  auto a = make("a", 0, false);
  auto b = make("b", 1, true);  // observes through the shared directory
  EXPECT_EQ(b->directory().get(), directory.get());
  for (int i = 0; i < 100; ++i) clock->Advance(std::chrono::milliseconds(10));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].scope, "global");
  EXPECT_EQ(changes[0].previous, "");
  EXPECT_EQ(changes[0].leader, "a");
  EXPECT_GT(changes[0].fencing_token, 0);
  EXPECT_EQ(heard, (std::vector<std::pair<std::string, std::string>>{{"global", "a"}}));
  ASSERT_TRUE(b->Promote("global", "b").ok());
  for (int i = 0; i < 200; ++i) clock->Advance(std::chrono::milliseconds(10));
  ASSERT_TRUE(b->Held("global").has_value());
  ASSERT_GE(changes.size(), 2u);
  const auto& last = changes.back();
  EXPECT_EQ(last.leader, "b");
  EXPECT_GT(last.fencing_token, changes[0].fencing_token);
  EXPECT_EQ(heard.back(), (std::pair<std::string, std::string>{"global", "b"}));
  // Every change heard once: no repeated (scope, leader) pairs in a row.
  for (size_t i = 1; i < heard.size(); ++i) EXPECT_NE(heard[i], heard[i - 1]) << i;
  b->Stop();
  a->Stop();
}

}  // namespace
}  // namespace omnirelay::leadership
