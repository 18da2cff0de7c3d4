// ShardRouter's answers (owner under the held version, and every refusal
// with its code and reason) and ShardMeter's per-second accounting on a
// ManualClock.
#include "omnirelay/shards/router.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "omnirelay/shards/strategy.h"

namespace omnirelay::shards {
namespace {

using namespace std::chrono_literals;

class RouterTest : public ::testing::Test {
 protected:
  RouterTest() {
    NamespaceOptions ns;
    ns.spec.ns = "users";
    ns.spec.shard_count = 128;
    ns.spec.replicas = 1;
    ns.budget_qps = 5;
    router_ = std::make_unique<ShardRouter>(
        "n1", std::vector<NamespaceOptions>{ns}, holder_,
        [this](std::string_view id) { return dead_.count(std::string(id)) == 0; }, clock_);
  }
  void Install(std::int64_t version, std::vector<std::string> ids) {
    std::vector<ShardNode> nodes;
    for (const auto& id : ids) nodes.push_back({id, id + ":7000", "", ""});
    NamespaceOptions ns = *router_->Find("users");
    auto map = *ComputeShardMap(ns.spec, nodes);
    map.version = version;
    ASSERT_TRUE(holder_->Offer(std::make_shared<const ShardMap>(std::move(map))));
  }
  static std::string CodeOf(const absl::Status& s) { return core::ErrorCode(s).value_or(""); }

  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  std::shared_ptr<ShardMapHolder> holder_ = std::make_shared<ShardMapHolder>();
  std::set<std::string> dead_;
  std::unique_ptr<ShardRouter> router_;
};

TEST_F(RouterTest, RefusesWithTheReasonNeverGuesses) {
  auto unknown = router_->Route("orders", "k");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CodeOf(unknown.status()), "unknown-shard-namespace");
  EXPECT_NE(unknown.status().message().find("configured: users"), std::string::npos);

  auto no_map = router_->Route("users", "k");
  EXPECT_EQ(no_map.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeOf(no_map.status()), "no-shard-map");

  Install(1, {"n1", "n2", "n3"});
  EXPECT_EQ(CodeOf(router_->Route("users", "").status()), "missing-shard-key");

  // Find a key owned by n2, then declare n2 dead: the router says so.
  std::string key;
  for (int i = 0; key.empty(); ++i) {
    auto r = *router_->Route("users", "key-" + std::to_string(i));
    if (r.owner->id == "n2") key = "key-" + std::to_string(i);
  }
  dead_.insert("n2");
  auto unroutable = router_->Route("users", key);
  EXPECT_EQ(unroutable.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeOf(unroutable.status()), "shard-owner-unroutable");
  EXPECT_NE(unroutable.status().message().find("map version 1"), std::string::npos);
}

TEST_F(RouterTest, RoutesToTheOwnerUnderTheHeldVersion) {
  Install(1, {"n1", "n2", "n3"});
  int local = 0;
  std::set<std::string> owners;
  for (int i = 0; i < 3000; ++i) {
    const std::string key = "key-" + std::to_string(i);
    auto r = router_->Route("users", key);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->map->version, 1);
    EXPECT_EQ(r->shard, ShardOfKey(key, 128));
    EXPECT_EQ(r->owner->id, r->map->Owner(r->shard).id);
    EXPECT_EQ(r->local, r->owner->id == "n1");
    local += r->local;
    owners.insert(r->owner->id);
  }
  EXPECT_EQ(owners.size(), 3u);
  EXPECT_GT(local, 500);
  // A new version replaces the old at once; the route names it.
  Install(2, {"n1", "n3"});
  for (int i = 0; i < 500; ++i) {
    auto r = *router_->Route("users", "key-" + std::to_string(i));
    EXPECT_EQ(r.map->version, 2);
    EXPECT_NE(r.owner->id, "n2");
  }
}

TEST_F(RouterTest, MeterCountsCompleteSecondsAndFlagsTheBudget) {
  Install(1, {"n1"});
  clock_->Set(core::TimePoint(std::chrono::seconds(1000)));
  for (int second = 0; second < 3; ++second) {
    for (int i = 0; i < 9; ++i) router_->RecordServed("users", 7);
    clock_->Advance(1s);
  }
  router_->RecordServed("users", 7);  // the current, incomplete second is not counted
  const ShardMeter* meter = router_->meter("users");
  EXPECT_DOUBLE_EQ(meter->Qps(7, clock_->Now()), 9.0);
  EXPECT_EQ(meter->Total(7), 28);
  EXPECT_DOUBLE_EQ(meter->Qps(8, clock_->Now()), 0.0);
  auto json = router_->ToJson();
  const auto& shard7 = json["namespaces"][0]["shards"][7];
  EXPECT_EQ(shard7["qps"], 9.0);
  EXPECT_EQ(shard7["overBudget"], true) << "budget is 5 QPS";
  EXPECT_EQ(json["namespaces"][0]["shards"][8]["overBudget"], false);
  EXPECT_EQ(json["namespaces"][0]["version"], 1);
  // Old seconds age out.
  clock_->Advance(5s);
  EXPECT_DOUBLE_EQ(meter->Qps(7, clock_->Now()), 0.0);
}

TEST(ShardMeterTest, ConcurrentRecordsAreAllCounted) {
  ShardMeter meter(4);
  const core::TimePoint t(std::chrono::seconds(500));
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) meter.Record(static_cast<std::uint32_t>(i % 4), t);
    });
  }
  for (auto& th : threads) th.join();
  for (std::uint32_t s = 0; s < 4; ++s) EXPECT_EQ(meter.Total(s), 20000);
  EXPECT_DOUBLE_EQ(meter.Qps(0, t + 1s), 20000.0 / 3);
}

}  // namespace
}  // namespace omnirelay::shards
