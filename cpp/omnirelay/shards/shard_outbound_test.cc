// ShardOutbound without the network: a real dispatcher with a shard route
// and a local procedure; calls that this node owns are served locally with
// the shard headers, forwarded calls it does not own are refused, and a
// forwarded call whose sender holds a newer version waits (clock timers) for
// that version and is then served here.
#include "omnirelay/shards/shard_outbound.h"

#include <gtest/gtest.h>

#include <set>

#include "omnirelay/core/retry_after.h"
#include "omnirelay/shards/strategy.h"
#include "omnirelay/transport/peer_pool.h"

namespace omnirelay::shards {
namespace {

using namespace std::chrono_literals;

class ShardOutboundTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NamespaceOptions ns;
    ns.spec.ns = "users";
    ns.spec.shard_count = 16;
    ns.spec.replicas = 1;
    ns.service = "users.v1.Users";
    ns.local_service = "local.Users";
    ns.budget_qps = 5;
    router_ = std::make_shared<ShardRouter>(
        "n1", std::vector<NamespaceOptions>{ns}, holder_, [](std::string_view) { return true; },
        clock_);
    dispatcher_ = std::make_shared<dispatcher::Dispatcher>("node");
    dispatcher::Procedure echo;
    echo.service = "local.Users";
    echo.name = "Get";
    echo.unary = [this](dispatcher::Request request, dispatcher::UnaryCallback done) {
      ++served_;
      done(dispatcher::Response{.headers = {}, .body = "served:" + request.body});
    };
    ASSERT_TRUE(dispatcher_->Register(echo).ok());
    ShardOutboundOptions options{
        .ns = "users", .local_service = "local.Users", .peer_addresses = {}, .tls = std::nullopt};
    options.throttle_pressured_shards = true;  // backpressure.shardThrottle: shard
    outbound_ = std::make_shared<ShardOutbound>(options, router_, dispatcher_, clock_, metrics_);
    ASSERT_TRUE(dispatcher_->AddOutbound("shards.users", outbound_).ok());
    ASSERT_TRUE(dispatcher_->AddRoute({"users.v1.Users/", "shards.users"}).ok());
    ASSERT_TRUE(dispatcher_->Start().ok());
  }
  void TearDown() override { dispatcher_->Stop(); }

  // A map in which `owner` owns every shard (one member besides a spare).
  void Install(std::int64_t version, const std::string& owner) {
    auto map = *ComputeShardMap(router_->Find("users")->spec, {{owner, owner + ":1", "", ""}});
    map.version = version;
    ASSERT_TRUE(holder_->Offer(std::make_shared<const ShardMap>(std::move(map))));
  }
  absl::StatusOr<dispatcher::Response> Call(
      std::string key, std::vector<std::pair<std::string, std::string>> headers) {
    dispatcher::Request request;
    request.meta.service = "users.v1.Users";
    request.meta.procedure = "Get";
    request.meta.shard_key = std::move(key);
    for (auto& [k, v] : headers) request.meta.headers.Set(k, v);
    request.body = "b";
    std::optional<absl::StatusOr<dispatcher::Response>> result;
    const auto* bound = dispatcher_->Resolve("users.v1.Users", "Get");
    EXPECT_NE(bound, nullptr);
    dispatcher_->InvokeUnary(
        *bound, std::move(request),
        [&](absl::StatusOr<dispatcher::Response> r) { result = std::move(r); });
    for (int i = 0; i < 400 && !result; ++i) clock_->Advance(10ms);  // version waits
    if (!result) return absl::DeadlineExceededError("no answer");
    return *result;
  }

  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  std::shared_ptr<core::MetricsRegistry> metrics_ = std::make_shared<core::MetricsRegistry>();
  std::shared_ptr<ShardMapHolder> holder_ = std::make_shared<ShardMapHolder>();
  std::shared_ptr<ShardRouter> router_;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::shared_ptr<ShardOutbound> outbound_;
  int served_ = 0;
};

TEST_F(ShardOutboundTest, OwnedShardsAreServedLocallyWithTheShardHeaders) {
  EXPECT_EQ(core::ErrorCode(Call("k", {}).status()).value_or(""), "no-shard-map");
  Install(3, "n1");
  auto response = Call("tenant-9", {});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, "served:b");
  EXPECT_EQ(response->headers.Get(kShardOwnerHeader).value_or(""), "n1");
  EXPECT_EQ(response->headers.Get(kShardVersionHeader).value_or(""), "3");
  EXPECT_EQ(response->headers.Get(kShardIdHeader).value_or(""),
            std::to_string(ShardOfKey("tenant-9", 16)));
  EXPECT_EQ(router_->meter("users")->Total(ShardOfKey("tenant-9", 16)), 1);
  EXPECT_EQ(metrics_->Total("omnirelay.shards.calls", {{"outcome", "local"}}), 1);
  auto unknown = Call("k", {{kShardNamespaceHeader, "orders"}});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Call("", {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ShardOutboundTest, AForwardedCallForAShardThisNodeDoesNotOwnIsRefusedNotBounced) {
  Install(5, "n2");
  auto refused = Call("k", {{kShardForwardedByHeader, "n3"}, {kShardVersionHeader, "5"}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(core::ErrorCode(refused.status()).value_or(""), "not-shard-owner");
  EXPECT_NE(refused.status().message().find("owner: n2"), std::string::npos);
  EXPECT_EQ(served_, 0);
}

TEST_F(ShardOutboundTest, AForwardedCallFromANewerVersionWaitsForItAndIsServedHere) {
  Install(5, "n2");
  dispatcher::Request request;
  request.meta.service = "users.v1.Users";
  request.meta.procedure = "Get";
  request.meta.shard_key = "k";
  request.meta.headers.Set(kShardForwardedByHeader, "n3");
  request.meta.headers.Set(kShardVersionHeader, "6");  // n3 holds v6, which names n1
  request.body = "b";
  std::optional<absl::StatusOr<dispatcher::Response>> result;
  dispatcher_->InvokeUnary(*dispatcher_->Resolve("users.v1.Users", "Get"), std::move(request),
                           [&](absl::StatusOr<dispatcher::Response> r) { result = std::move(r); });
  clock_->Advance(100ms);
  EXPECT_FALSE(result.has_value()) << "held until this node sees version 6";
  Install(6, "n1");
  clock_->Advance(20ms);
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok()) << result->status();
  EXPECT_EQ((*result)->headers.Get(kShardVersionHeader).value_or(""), "6");
  EXPECT_EQ(served_, 1);

  // The wait is bounded: a version that never arrives ends in not-shard-owner.
  Install(7, "n2");
  auto never = Call("k", {{kShardForwardedByHeader, "n3"}, {kShardVersionHeader, "99"}});
  EXPECT_EQ(core::ErrorCode(never.status()).value_or(""), "not-shard-owner");
}

TEST_F(ShardOutboundTest, ACallMarkedForAReplicaIsServedOnlyWhereTheMapNamesOne) {
  // n2 owns everything, n1 (this node) is its replica.
  auto map = *ComputeShardMap(router_->Find("users")->spec,
                              {{"n1", "n1:1", "east", ""}, {"n2", "n2:1", "west", ""}});
  map.version = 4;
  for (std::uint32_t s = 0; s < map.shard_count(); ++s) {
    if (map.Owner(s).id != "n2") {
      ASSERT_TRUE(map.Move(s, "n2", "test", "").ok());
    }
  }
  ASSERT_TRUE(holder_->Offer(std::make_shared<const ShardMap>(map)));
  auto served = Call("k", {{kShardForwardedByHeader, "n3"},
                           {kShardVersionHeader, "4"},
                           {kShardTargetHeader, "n1"},
                           {kShardRoleHeader, "replica"}});
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->headers.Get(kShardServedByHeader).value_or(""), "n1");
  EXPECT_EQ(served->headers.Get(kShardOwnerHeader).value_or(""), "n2");
  EXPECT_EQ(served->headers.Get(kShardRoleHeader).value_or(""), "replica");
  EXPECT_EQ(served_, 1);
  // Without the replica marking, the owner rules apply: not ours, refused.
  auto refused = Call("k", {{kShardForwardedByHeader, "n3"}, {kShardVersionHeader, "4"}});
  EXPECT_EQ(core::ErrorCode(refused.status()).value_or(""), "not-shard-owner");
  // A map that does not name this node at all: a replica marking is refused.
  Install(5, "n2");
  auto stale = Call("k", {{kShardForwardedByHeader, "n3"},
                          {kShardVersionHeader, "5"},
                          {kShardTargetHeader, "n1"},
                          {kShardRoleHeader, "replica"}});
  EXPECT_EQ(core::ErrorCode(stale.status()).value_or(""), "not-shard-owner");
  EXPECT_EQ(served_, 1);
}

TEST_F(ShardOutboundTest, AShardUnderBackpressureIsAdmittedUpToItsBudgetPerSecondHere) {
  Install(1, "n1");
  const std::uint32_t shard = ShardOfKey("hot", 16);
  // Not under backpressure: no limit.
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(Call("hot", {}).ok());
  router_->SetPressured("users", shard, true);
  clock_->Advance(1s);
  const auto second = std::chrono::floor<std::chrono::seconds>(clock_->Now());
  int admitted = 0;
  absl::Status refusal;
  for (int i = 0; i < 8; ++i) {
    auto r = Call("hot", {});
    if (r.ok()) {
      ++admitted;
    } else {
      refusal = r.status();
    }
  }
  ASSERT_EQ(std::chrono::floor<std::chrono::seconds>(clock_->Now()), second)
      << "the calls must fall in one second for this check";
  EXPECT_EQ(admitted, 5);  // the budget
  EXPECT_EQ(refusal.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core::ErrorCode(refusal).value_or(""), "shard-backpressure");
  EXPECT_EQ(core::RetryAfter(refusal).value_or(0ms), 1000ms);
  EXPECT_EQ(core::Backpressure(refusal).value_or(""), "node=n1");
  EXPECT_EQ(metrics_->Total("omnirelay.shards.calls", {{"outcome", "throttled"}}), 3);
  // Other shards are not limited; the next second admits again.
  for (int i = 0; i < 8; ++i) {
    std::string key = "cold-" + std::to_string(i);
    if (ShardOfKey(key, 16) != shard) {
      ASSERT_TRUE(Call(key, {}).ok());
    }
  }
  clock_->Advance(1s);
  EXPECT_TRUE(Call("hot", {}).ok());
  // Cleared: unlimited again.
  router_->SetPressured("users", shard, false);
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(Call("hot", {}).ok());
}

TEST_F(ShardOutboundTest, TheRuntimeBudgetOverrideIsWhatAPressuredShardAdmits) {
  Install(1, "n1");
  const std::uint32_t shard = ShardOfKey("hot", 16);
  // Configured 5/s; the runtime override (SetShardBudget) says 2/s for this shard.
  shards::BudgetOverride budgets;
  budgets.shard_qps[shard] = 2;
  router_->ApplyBudgets("users", budgets);
  EXPECT_EQ(router_->EffectiveBudget("users", shard), 2);
  EXPECT_EQ(router_->EffectiveBudget("users", (shard + 1) % 16), 5);
  router_->SetPressured("users", shard, true);
  clock_->Advance(1s);
  int admitted = 0;
  for (int i = 0; i < 8; ++i) admitted += Call("hot", {}).ok() ? 1 : 0;
  EXPECT_EQ(admitted, 2);
  // The override removed (namespace 0 = no budget): a pressured shard is not limited.
  shards::BudgetOverride none;
  none.ns_qps = 0;
  router_->ApplyBudgets("users", none);
  clock_->Advance(1s);
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(Call("hot", {}).ok());
}

TEST_F(ShardOutboundTest, TheForwardingPoolFollowsTheMapsNodesWithoutRestart) {
  auto pool = outbound_->pool();
  ASSERT_NE(pool, nullptr);
  EXPECT_TRUE(pool->Peers().empty());
  // 1,000 owners: one pool, 999 peers (this node excluded), no thread each.
  std::vector<ShardNode> nodes;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = "n" + std::to_string(i + 1);
    nodes.push_back({id, id + ".example:7000", i % 2 ? "east" : "west", ""});
  }
  auto big = *ComputeShardMap(router_->Find("users")->spec, nodes);
  big.version = 1;
  ASSERT_TRUE(holder_->Offer(std::make_shared<const ShardMap>(big)));
  auto peers = pool->Peers();
  ASSERT_EQ(peers.size(), 999u);
  for (const auto& p : peers) {
    EXPECT_NE(p.id, "n1");
    EXPECT_EQ(p.address, p.id + ".example:7000");
    EXPECT_FALSE(p.region.empty());
  }
  // A newer version with fewer members: the pool shrinks to them.
  auto small = *ComputeShardMap(router_->Find("users")->spec,
                                {{"n1", "a:1", "", ""}, {"n2", "b:2", "west", ""}});
  small.version = 2;
  ASSERT_TRUE(holder_->Offer(std::make_shared<const ShardMap>(small)));
  peers = pool->Peers();
  ASSERT_EQ(peers.size(), 1u);
  EXPECT_EQ(peers[0].id, "n2");
  EXPECT_EQ(peers[0].address, "b:2");
  EXPECT_EQ(pool->Snapshot()["chooser"], "shard-target");
}

// The geo stickiness rule on a hand-built map (no clock, no network).
class ChooseShardTargetTest : public ::testing::Test {
 protected:
  ShardMap Map(std::vector<std::string> placement_ids) {
    ShardMap map;
    map.spec.ns = "users";
    map.spec.shard_count = 1;
    map.nodes = {{"e1", "e1:1", "east", ""},
                 {"e2", "e2:1", "east", ""},
                 {"w1", "w1:1", "west", ""},
                 {"w2", "w2:1", "west", ""}};
    map.width = static_cast<std::uint32_t>(placement_ids.size());
    for (const auto& id : placement_ids) map.placement.push_back(*map.IndexOf(id));
    map.version = 1;
    return map;
  }
  std::string Target(const ShardMap& map, std::string_view self, bool prefer_local,
                     std::set<std::string, std::less<>> down = {}, bool* replica = nullptr) {
    auto t = ChooseShardTarget(map, 0, self, "west", prefer_local,
                               [&](std::string_view id) { return !down.count(id); });
    if (replica) *replica = t.replica;
    return t.node->id;
  }
};

TEST_F(ChooseShardTargetTest, OwnerInTheChosenRegionElseAReplicaThereElseTheOwner) {
  bool replica = true;
  // Local mode (west): a west owner is kept.
  EXPECT_EQ(Target(Map({"w1", "e1"}), "w2", true, {}, &replica), "w1");
  EXPECT_FALSE(replica);
  // East owner, west replica: the replica in the chosen (local) region.
  EXPECT_EQ(Target(Map({"e1", "w1"}), "w2", true, {}, &replica), "w1");
  EXPECT_TRUE(replica);
  // ... unless it is not routable: the owner.
  EXPECT_EQ(Target(Map({"e1", "w1"}), "w2", true, {"w1"}), "e1");
  // Fallback (every region but west): an east owner is kept ...
  EXPECT_EQ(Target(Map({"e1", "w1"}), "w2", false), "e1");
  // ... a west owner gives way to its first east replica ...
  EXPECT_EQ(Target(Map({"w1", "w2", "e2", "e1"}), "x", false, {}, &replica), "e2");
  EXPECT_TRUE(replica);
  // ... or to the owner when no replica is in the chosen region.
  EXPECT_EQ(Target(Map({"w1", "w2"}), "x", false, {}, &replica), "w1");
  EXPECT_FALSE(replica);
  // This node: an owner always serves its own; a replica serves in fallback
  // rather than send to a west owner.
  EXPECT_EQ(Target(Map({"w2", "e1"}), "w2", false), "w2");
  EXPECT_EQ(Target(Map({"w1", "w2"}), "w2", false, {}, &replica), "w2");
  EXPECT_TRUE(replica);
  // Without a local region (no geo): always the owner.
  EXPECT_EQ(
      ChooseShardTarget(Map({"e1", "w1"}), 0, "w2", "", true, [](std::string_view) { return true; })
          .node->id,
      "e1");
}

}  // namespace
}  // namespace omnirelay::shards
