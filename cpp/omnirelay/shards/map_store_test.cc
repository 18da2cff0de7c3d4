// Versioned shard maps through the coordination store: the leader writes
// with its fencing token and a compare-and-swap on the revision, a deposed
// leader's write is refused and counted, every node's watcher holds the
// newest version. In-memory store on a ManualClock (deterministic), then the
// SQLite store shared by two independent store instances (two connections to
// one file, as two processes have).
#include "omnirelay/shards/map_store.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "omnirelay/coord/memory_backend.h"
#include "omnirelay/shards/router.h"
#include "omnirelay/shards/strategy.h"

namespace omnirelay::shards {
namespace {

using namespace std::chrono_literals;

std::vector<ShardMember> Members(int n) {
  std::vector<ShardMember> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(
        {{"node-" + std::to_string(i), "127.0.0.1:" + std::to_string(7000 + i), "east", "a"},
         {i == 0 ? "gateway" : "owner"}});
  }
  return out;
}

NamespaceOptions Users() {
  NamespaceOptions ns;
  ns.spec.ns = "users";
  ns.spec.shard_count = 256;
  ns.spec.replicas = 1;
  ns.spec.strategy = Strategy::kRendezvous;
  return ns;
}

TEST(ShardMapHolderTest, KeepsTheNewestVersion) {
  core::MetricsRegistry metrics;
  ShardMapHolder holder(&metrics);
  auto map = [](std::int64_t version) {
    auto m = std::make_shared<ShardMap>(*ComputeShardMap(Users().spec, {{"a", "x", "", ""}}));
    m->version = version;
    return std::shared_ptr<const ShardMap>(m);
  };
  int installs = 0;
  holder.AddListener([&](const ShardMap&) { ++installs; });
  EXPECT_EQ(holder.Get("users"), nullptr);
  EXPECT_TRUE(holder.Offer(map(2)));
  EXPECT_FALSE(holder.Offer(map(1))) << "an older version never rolls a node back";
  EXPECT_FALSE(holder.Offer(map(2)));
  EXPECT_TRUE(holder.Offer(map(3)));
  EXPECT_EQ(holder.Get("users")->version, 3);
  EXPECT_EQ(installs, 2);
  EXPECT_EQ(metrics.Total("omnirelay.shards.map_version", {{"namespace", "users"}}), 3);
  EXPECT_EQ(metrics.Total("omnirelay.shards.map_changes", {{"namespace", "users"}}), 2);
}

class MapStoreTest : public ::testing::Test {
 protected:
  struct Node {
    std::shared_ptr<coord::LeadershipStore> store;
    std::shared_ptr<leadership::LeadershipManager> leadership;
    std::shared_ptr<ShardMapHolder> holder;
    std::unique_ptr<ShardMapWatcher> watcher;
    std::unique_ptr<ShardManager> manager;
  };
  std::unique_ptr<Node> Start(const std::string& id, int priority) {
    auto node = std::make_unique<Node>();
    node->store =
        std::make_shared<coord::LeadershipStore>(backend_, clock_, "/omnirelay/test/", &metrics_);
    auto options = leadership::LeadershipOptions::Fast();
    options.node_id = id;
    options.candidacies = {{"global", priority}};
    node->leadership =
        leadership::LeadershipManager::Create(options, node->store, clock_, &metrics_);
    EXPECT_TRUE(node->leadership->Start().ok());
    node->holder = std::make_shared<ShardMapHolder>();
    node->watcher = *ShardMapWatcher::Start(node->store, node->holder);
    ShardManagerOptions manager_options{.node_id = id, .namespaces = {namespace_}};
    if (publish_load_) {
      manager_options.pending = [this, id] { return pending_[id].load(); };
      manager_options.on_rebalance = [this](const RebalanceDecision& d) {
        std::lock_guard lock(decisions_mu_);
        decisions_.push_back(d);
      };
    }
    node->manager = std::make_unique<ShardManager>(
        manager_options, node->store, node->leadership, [this] { return members_; }, node->holder,
        clock_, &metrics_);
    return node;
  }
  void Step(core::Duration total) {
    for (core::Duration done{}; done < total; done += 10ms) clock_->Advance(10ms);
  }

  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  std::shared_ptr<coord::MemoryBackend> backend_ = coord::MemoryBackend::Create(clock_);
  core::MetricsRegistry metrics_;
  NamespaceOptions namespace_ = Users();
  std::vector<ShardMember> members_ = Members(5);
  // Load reports (off by default: the tests above predate them).
  bool publish_load_ = false;
  std::map<std::string, std::atomic<std::int64_t>> pending_;
  std::mutex decisions_mu_;
  std::vector<RebalanceDecision> decisions_;
};

TEST_F(MapStoreTest, LeaderWritesVersionsAndEveryNodeHoldsTheNewest) {
  auto a = Start("node-0", 0);
  auto b = Start("node-1", 1);
  ASSERT_TRUE(a->leadership->Held("global").has_value());
  EXPECT_TRUE(b->manager->ReconcileNow().empty()) << "only the leader writes";
  EXPECT_EQ(b->holder->Get("users"), nullptr);

  EXPECT_EQ(a->manager->ReconcileNow(), std::vector<std::string>{"users"});
  auto held_a = a->holder->Get("users");
  auto held_b = b->holder->Get("users");
  ASSERT_NE(held_b, nullptr) << "the watch delivered it";
  EXPECT_EQ(held_a->version, 1);
  EXPECT_EQ(held_b->version, 1);
  EXPECT_EQ(held_b->placement, held_a->placement);
  EXPECT_EQ(held_b->written_by, "node-0");
  EXPECT_EQ(held_b->fencing_token, a->leadership->Held("global")->fencing_token);
  EXPECT_EQ(held_b->nodes.size(), 5u);

  EXPECT_TRUE(a->manager->ReconcileNow().empty()) << "same members: no new version";

  members_.pop_back();  // a member left
  EXPECT_EQ(a->manager->ReconcileNow().size(), 1u);
  EXPECT_EQ(b->holder->Get("users")->version, 2);
  EXPECT_EQ(b->holder->Get("users")->nodes.size(), 4u);
  EXPECT_EQ(metrics_.Total("omnirelay.shards.map_writes", {{"namespace", "users"}}), 2);

  // A node that starts later reads the current version at once.
  auto c = Start("node-2", 2);
  ASSERT_NE(c->holder->Get("users"), nullptr);
  EXPECT_EQ(c->holder->Get("users")->version, 2);
}

TEST_F(MapStoreTest, OwnerRoleFiltersTheMembers) {
  namespace_.owner_role = "owner";
  auto a = Start("node-0", 0);
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  auto map = a->holder->Get("users");
  ASSERT_EQ(map->nodes.size(), 4u);
  EXPECT_FALSE(map->IndexOf("node-0").has_value()) << "the gateway owns nothing";
}

TEST_F(MapStoreTest, DeposedLeadersWriteIsRejectedAndCounted) {
  auto a = Start("node-0", 0);
  auto b = Start("node-1", 1);
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  const coord::Leadership old = *a->leadership->Held("global");
  a->leadership->Freeze();  // paused: no resign, no renewals
  Step(2500ms);             // lease expired, b took over
  ASSERT_TRUE(b->leadership->Held("global").has_value());
  EXPECT_GT(b->leadership->Held("global")->fencing_token, old.fencing_token);

  // The paused leader wakes up and writes with its old token: refused.
  auto previous = *ReadShardMap(*a->store, "users");
  members_.pop_back();
  std::vector<ShardNode> nodes;
  for (const auto& m : members_) nodes.push_back(m.node);
  auto stale = PublishShardMap(*a->store, old, *ComputeShardMap(namespace_.spec, nodes), previous,
                               &metrics_);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core::ErrorCode(stale.status()).value_or(""), "stale-fencing-token");
  EXPECT_EQ(metrics_.Total("omnirelay.shards.map_writes_rejected",
                           {{"namespace", "users"}, {"reason", "stale-fencing-token"}}),
            1);
  EXPECT_GE(a->store->fenced_writes_rejected(), 1);
  EXPECT_EQ(b->holder->Get("users")->version, 1) << "nothing was written";

  // The new leader writes the next version with its own token.
  ASSERT_EQ(b->manager->ReconcileNow().size(), 1u);
  EXPECT_EQ(b->holder->Get("users")->version, 2);
  EXPECT_EQ(b->holder->Get("users")->written_by, "node-1");

  // A write based on a replaced version loses the compare-and-swap.
  auto lost = PublishShardMap(*b->store, *b->leadership->Held("global"),
                              *ComputeShardMap(namespace_.spec, nodes), previous, &metrics_);
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core::ErrorCode(lost.status()).value_or(""), "revision-mismatch");
  EXPECT_EQ(b->holder->Get("users")->version, 2);
}

TEST_F(MapStoreTest, RebalanceMovesAShardToItsCoolestReplicaAndTheMoveSurvivesMembershipChanges) {
  namespace_.spec.replicas = 2;
  auto a = Start("node-0", 0);
  auto b = Start("node-1", 1);
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  const auto v1 = a->holder->Get("users");
  const auto before = v1->Placement(42);
  const std::string old_owner = v1->nodes[before[0]].id;
  std::vector<int> owned(v1->nodes.size(), 0);
  for (std::uint32_t s = 0; s < v1->shard_count(); ++s) ++owned[v1->OwnerIndex(s)];
  const std::uint32_t coolest = owned[before[2]] < owned[before[1]] ? before[2] : before[1];

  // Any node may ask; a second request while one is pending is refused.
  ASSERT_TRUE(RequestRebalance(*b->store, "users", 42, "", "manual", "node-1").ok());
  auto twice = RequestRebalance(*b->store, "users", 42, "", "manual", "node-1");
  EXPECT_EQ(twice.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(core::ErrorCode(twice).value_or(""), "rebalance-pending");
  EXPECT_TRUE(b->manager->ReconcileNow().empty()) << "only the leader applies it";

  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  const auto v2 = b->holder->Get("users");
  ASSERT_EQ(v2->version, 2);
  EXPECT_EQ(v2->Owner(42).id, v1->nodes[coolest].id) << "the replica owning the fewest shards";
  const auto after = v2->Placement(42);
  EXPECT_NE(std::find(after.begin() + 1, after.end(), before[0]), after.end())
      << "the old owner stays a replica";
  ASSERT_NE(v2->MoveOf(42), nullptr);
  EXPECT_EQ(v2->MoveOf(42)->from, old_owner);
  for (std::uint32_t s = 0; s < v2->shard_count(); ++s) {
    if (s != 42) {
      EXPECT_EQ(v2->Owner(s).id, v1->Owner(s).id) << "shard " << s;
    }
  }
  auto request = nlohmann::json::parse((*a->store->Get(RebalanceKey("users", 42)))->value);
  EXPECT_EQ(request["done"], true);
  EXPECT_EQ(request["outcome"], "moved to " + v1->nodes[coolest].id);
  EXPECT_EQ(metrics_.Total("omnirelay.shards.rebalances", {{"reason", "manual"}}), 1);

  // A target that is not a replica is refused; nothing is written.
  std::string stranger;
  for (const auto& n : v2->nodes) {
    auto p = v2->Placement(42);
    if (std::none_of(p.begin(), p.end(),
                     [&](std::uint32_t i) { return v2->nodes[i].id == n.id; })) {
      stranger = n.id;
    }
  }
  ASSERT_FALSE(stranger.empty());
  ASSERT_TRUE(RequestRebalance(*b->store, "users", 42, stranger, "manual", "node-1").ok());
  EXPECT_TRUE(a->manager->ReconcileNow().empty());
  EXPECT_EQ(b->holder->Get("users")->version, 2);
  request = nlohmann::json::parse((*a->store->Get(RebalanceKey("users", 42)))->value);
  EXPECT_EQ(request["done"], true);
  EXPECT_NE(request["outcome"].get<std::string>().find("is not a replica"), std::string::npos);

  // A member unrelated to shard 42 leaves: the map is recomputed and the
  // move is kept.
  members_.erase(std::find_if(members_.begin(), members_.end(),
                              [&](const ShardMember& m) { return m.node.id == stranger; }));
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  const auto v3 = b->holder->Get("users");
  EXPECT_EQ(v3->version, 3);
  EXPECT_EQ(v3->nodes.size(), 4u);
  EXPECT_EQ(v3->Owner(42).id, v1->nodes[coolest].id);

  // Moving it back by name.
  ASSERT_TRUE(RequestRebalance(*b->store, "users", 42, old_owner, "manual", "node-1").ok());
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  EXPECT_EQ(b->holder->Get("users")->Owner(42).id, old_owner);
}

TEST_F(MapStoreTest, AnOwnerOverItsBudgetGetsTheShardMovedOnceUntilTheCooldownPasses) {
  namespace_.spec.replicas = 1;
  namespace_.budget_qps = 5;
  auto a = Start("node-0", 0);
  auto b = Start("node-1", 1);
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  auto router = std::make_shared<ShardRouter>(
      "node-0", std::vector<NamespaceOptions>{namespace_}, a->holder,
      [](std::string_view) { return true; }, clock_);
  a->manager->SetRouter(router);
  const auto v1 = a->holder->Get("users");
  std::uint32_t hot = 0;
  while (v1->Owner(hot).id != "node-0") ++hot;
  EXPECT_TRUE(a->manager->ReconcileNow().empty()) << "no load, no move";
  for (int second = 0; second < 4; ++second) {
    for (int i = 0; i < 20; ++i) router->RecordServed("users", hot);
    clock_->Advance(1s);
  }
  // One pass: the owner requests the move, the leader (the same node here)
  // applies it.
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  const auto v2 = b->holder->Get("users");
  EXPECT_EQ(v2->version, 2);
  EXPECT_NE(v2->Owner(hot).id, "node-0");
  EXPECT_EQ(v2->MoveOf(hot)->reason, "over-budget");
  EXPECT_EQ(metrics_.Total("omnirelay.shards.rebalances", {{"reason", "over-budget"}}), 1);
  auto request = nlohmann::json::parse((*a->store->Get(RebalanceKey("users", hot)))->value);
  EXPECT_EQ(request["requestedBy"], "node-0");
  EXPECT_GT(request["qps"].get<double>(), 5);

  // The new owner is hot too: within the cooldown the shard is not moved back.
  ASSERT_TRUE(RequestRebalance(*b->store, "users", hot, "", "over-budget", "node-x", 50).ok());
  EXPECT_TRUE(a->manager->ReconcileNow().empty());
  EXPECT_EQ(b->holder->Get("users")->version, 2);
  request = nlohmann::json::parse((*a->store->Get(RebalanceKey("users", hot)))->value);
  EXPECT_NE(request["outcome"].get<std::string>().find("cooldown"), std::string::npos);
  Step(31s);
  ASSERT_TRUE(RequestRebalance(*b->store, "users", hot, "", "over-budget", "node-x", 50).ok());
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  EXPECT_EQ(b->holder->Get("users")->Owner(hot).id, "node-0");
}

TEST_F(MapStoreTest, LeaderMovesAHotShardToTheReplicaWithTheFewestPendingCalls) {
  namespace_.spec.replicas = 2;
  publish_load_ = true;
  for (const auto& m : members_) pending_[m.node.id] = 0;
  auto a = Start("node-0", 0);
  auto b = Start("node-1", 1);
  std::vector<std::pair<std::int64_t, std::int64_t>> changes;  // (version, previous) seen by b
  b->holder->AddChangeListener([&](const ShardMap& map, std::int64_t previous) {
    changes.emplace_back(map.version, previous);
  });
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  const auto v1 = a->holder->Get("users");
  const auto placement = v1->Placement(42);
  std::vector<int> owned(v1->nodes.size(), 0);
  for (std::uint32_t s = 0; s < v1->shard_count(); ++s) ++owned[v1->OwnerIndex(s)];
  // Load the replica that owns the FEWEST shards (the old chooser's pick),
  // so only a load-aware choice picks the other one.
  const std::uint32_t few_shards =
      owned[placement[2]] < owned[placement[1]] ? placement[2] : placement[1];
  const std::uint32_t other = few_shards == placement[1] ? placement[2] : placement[1];
  const std::string busy = v1->nodes[few_shards].id;
  const std::string idle = v1->nodes[other].id;
  auto report = [&](const std::string& id, std::int64_t pending, double qps) {
    pending_[id] = pending;  // for the nodes whose manager reports itself
    ASSERT_TRUE(PublishLoad(*a->store, "users",
                            {.node = id,
                             .pending = pending,
                             .qps = qps,
                             .at = core::FormatTimestamp(clock_->Now())})
                    .ok());
  };
  report(busy, 37, 1.0);
  report(idle, 2, 90.0);  // busier by QPS, but fewer calls waiting: pending decides

  ASSERT_TRUE(RequestRebalance(*b->store, "users", 42, "", "over-budget", "node-1", 120).ok());
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  const auto v2 = b->holder->Get("users");
  ASSERT_EQ(v2->version, 2);
  EXPECT_EQ(v2->Owner(42).id, idle) << "fewest pending, not fewest shards owned";

  // The decision travels in the map version that applies it.
  const auto& decision = v2->last_rebalance;
  ASSERT_TRUE(decision.is_object());
  EXPECT_EQ(decision["chooser"], "fewest-pending");
  EXPECT_EQ(decision["shard"], 42);
  EXPECT_EQ(decision["from"], v1->Owner(42).id);
  EXPECT_EQ(decision["to"], idle);
  EXPECT_EQ(decision["version"], 2);
  EXPECT_EQ(decision["reason"], "over-budget");
  EXPECT_EQ(decision["requestedBy"], "node-1");
  ASSERT_EQ(decision["candidates"].size(), 2u);
  for (const auto& c : decision["candidates"]) {
    EXPECT_EQ(c["pending"], c["node"] == busy ? 37 : 2);
    EXPECT_EQ(c["chosen"], c["node"] == idle);
  }
  {
    std::lock_guard lock(decisions_mu_);
    ASSERT_EQ(decisions_.size(), 1u) << "the leader reports each applied move";
    EXPECT_EQ(decisions_[0].version, 2);
    EXPECT_EQ(decisions_[0].to, idle);
  }
  ASSERT_GE(changes.size(), 2u);
  EXPECT_EQ(changes.back(), (std::pair<std::int64_t, std::int64_t>{2, 1}));

  // Every node's own report is in the store (the leader's too).
  auto loads = *ReadLoads(*a->store, "users");
  EXPECT_TRUE(loads.contains("node-0"));
  EXPECT_TRUE(loads.contains("node-1"));

  // A membership change (a member outside shard 42's placement leaves)
  // keeps the decision on record.
  const auto p2 = v2->Placement(42);
  auto leaver = std::find_if(members_.begin(), members_.end(), [&](const ShardMember& m) {
    const auto index = *v2->IndexOf(m.node.id);
    return m.node.id != "node-0" && std::find(p2.begin(), p2.end(), index) == p2.end();
  });
  ASSERT_NE(leaver, members_.end());
  members_.erase(leaver);
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  EXPECT_EQ(b->holder->Get("users")->version, 3);
  EXPECT_EQ(b->holder->Get("users")->Owner(42).id, idle);
  EXPECT_EQ(b->holder->Get("users")->last_rebalance["to"], idle);
}

TEST_F(MapStoreTest, ARuntimeBudgetMakesTheOwnerAskForAMove) {
  namespace_.spec.replicas = 1;
  namespace_.budget_qps = 0;  // none configured: only the runtime budget applies
  auto a = Start("node-0", 0);
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  auto router = std::make_shared<ShardRouter>(
      "node-0", std::vector<NamespaceOptions>{namespace_}, a->holder,
      [](std::string_view) { return true; }, clock_);
  a->manager->SetRouter(router);
  const auto v1 = a->holder->Get("users");
  std::uint32_t hot = 0;
  while (v1->Owner(hot).id != "node-0") ++hot;
  for (int second = 0; second < 4; ++second) {
    for (int i = 0; i < 20; ++i) router->RecordServed("users", hot);
    clock_->Advance(1s);
  }
  EXPECT_TRUE(a->manager->ReconcileNow().empty()) << "no budget: 20 QPS is fine";
  EXPECT_EQ(SetBudget(*a->store, "users", hot, -1, "t").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto set = SetBudget(*a->store, "users", hot, 5, "test");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->For(hot, 0), 5);
  EXPECT_EQ(set->For(hot + 1, 0), 0) << "only that shard";
  ASSERT_EQ(a->manager->ReconcileNow().size(), 1u);
  EXPECT_NE(a->holder->Get("users")->Owner(hot).id, "node-0");
  EXPECT_EQ(a->holder->Get("users")->MoveOf(hot)->reason, "over-budget");
  // A namespace budget sits under the per-shard one.
  set = SetBudget(*a->store, "users", std::nullopt, 100, "test");
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(set->For(hot, 0), 5);
  EXPECT_EQ(set->For(hot + 1, 0), 100);
  EXPECT_EQ(ReadBudget(*a->store, "users")->ns_qps, 100);
}

TEST(SqliteMapStoreTest, TwoStoreInstancesOnOneFileSeeTheSameVersions) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("shards-sqlite-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  coord::StoreOptions options;
  options.kind = "sqlite";
  options.path = (dir / "coord.db").string();
  options.poll_interval = 10ms;
  auto clock = core::SystemClock::Shared();
  std::shared_ptr<coord::LeadershipStore> writer = *coord::LeadershipStore::Open(options, clock);
  std::shared_ptr<coord::LeadershipStore> reader = *coord::LeadershipStore::Open(options, clock);
  auto holder = std::make_shared<ShardMapHolder>();
  auto watcher = *ShardMapWatcher::Start(reader, holder);

  auto lease = *writer->GrantLease(5s);
  auto won = *writer->TryCampaign("global", lease.id, "writer");
  ASSERT_TRUE(won.has_value());
  std::vector<ShardNode> nodes;
  for (const auto& m : Members(3)) nodes.push_back(m.node);
  const auto spec = Users().spec;
  ASSERT_TRUE(PublishShardMap(*writer, *won, *ComputeShardMap(spec, nodes), std::nullopt).ok());
  auto wait_for_version = [&](std::int64_t version) {
    for (int i = 0; i < 500; ++i) {  // bounded: 5 s
      auto map = holder->Get("users");
      if (map && map->version >= version) return map->version;
      std::this_thread::sleep_for(10ms);
    }
    return std::int64_t{0};
  };
  EXPECT_EQ(wait_for_version(1), 1);

  // The other instance takes over once the writer's lease is gone; the old
  // leadership's write is refused, the new one's accepted.
  ASSERT_TRUE(writer->RevokeLease(lease.id).ok());
  auto lease2 = *reader->GrantLease(5s);
  auto won2 = *reader->TryCampaign("global", lease2.id, "reader");
  ASSERT_TRUE(won2.has_value());
  auto previous = *ReadShardMap(*writer, "users");
  nodes.pop_back();
  auto stale = PublishShardMap(*writer, *won, *ComputeShardMap(spec, nodes), previous);
  EXPECT_EQ(core::ErrorCode(stale.status()).value_or(""), "stale-fencing-token");
  ASSERT_TRUE(PublishShardMap(*reader, *won2, *ComputeShardMap(spec, nodes), previous).ok());
  EXPECT_EQ(wait_for_version(2), 2);
  EXPECT_EQ(holder->Get("users")->nodes.size(), 2u);
  EXPECT_EQ(holder->Get("users")->written_by, "reader");
  watcher.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace omnirelay::shards
