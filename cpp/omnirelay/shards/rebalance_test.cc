// The fewest-pending chooser (pure), load reports and budgets as JSON.
#include "omnirelay/shards/rebalance.h"

#include <gtest/gtest.h>

namespace omnirelay::shards {
namespace {

RebalanceCandidate Known(std::string node, std::int64_t pending, double qps, int owned = 10) {
  return {.node = std::move(node),
          .load_known = true,
          .pending = pending,
          .qps = qps,
          .shards_owned = owned};
}

RebalanceCandidate Unknown(std::string node, int owned) {
  return {.node = std::move(node), .shards_owned = owned};
}

TEST(ChooseFewestPendingTest, FewestPendingWinsOverQpsAndShardsOwned) {
  std::string chooser;
  EXPECT_EQ(ChooseFewestPending({Known("a", 9, 1, 1), Known("b", 3, 500, 40), Known("c", 4, 0, 2)},
                                &chooser),
            1u);
  EXPECT_EQ(chooser, "fewest-pending");
}

TEST(ChooseFewestPendingTest, TiesGoToLowerQpsThenToTheEarlierReplica) {
  std::string chooser;
  EXPECT_EQ(
      ChooseFewestPending({Known("a", 2, 80), Known("b", 2, 20), Known("c", 2, 50)}, &chooser), 1u);
  EXPECT_EQ(ChooseFewestPending({Known("a", 2, 20), Known("b", 2, 20)}, &chooser), 0u);
  EXPECT_EQ(
      ChooseFewestPending({Known("a", 5, 20), Known("b", 2, 20), Known("c", 2, 20)}, &chooser), 1u)
      << "stable: the earlier of equal candidates";
}

TEST(ChooseFewestPendingTest, ReplicasWithoutAFreshReportRankLast) {
  std::string chooser;
  EXPECT_EQ(ChooseFewestPending({Unknown("a", 0), Known("b", 100, 900)}, &chooser), 1u);
  EXPECT_EQ(chooser, "fewest-pending");
}

TEST(ChooseFewestPendingTest, WithNoReportAtAllFewestShardsOwnedDecides) {
  std::string chooser;
  EXPECT_EQ(ChooseFewestPending({Unknown("a", 7), Unknown("b", 3), Unknown("c", 3)}, &chooser), 1u);
  EXPECT_EQ(chooser, "fewest-shards");
}

TEST(RebalanceJsonTest, LoadAndBudgetRoundTrip) {
  NodeLoad load{.node = "n1",
                .pending = 12,
                .qps = 33.5,
                .shard_qps = {{42, 30.5}, {7, 3}},
                .at = "2026-12-01T20:00:00Z"};
  auto back = NodeLoad::FromJson(load.ToJson());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->pending, 12);
  EXPECT_EQ(back->shard_qps, load.shard_qps);
  EXPECT_FALSE(NodeLoad::FromJson(nlohmann::json::parse("[1]")).has_value());

  BudgetOverride budget{.ns_qps = 50, .shard_qps = {{42, 5}}};
  auto again = BudgetOverride::FromJson(budget.ToJson());
  EXPECT_EQ(again.For(42, 1000), 5);
  EXPECT_EQ(again.For(1, 1000), 50);
  EXPECT_EQ(BudgetOverride{}.For(1, 1000), 1000) << "no override: the configured budget";
}

TEST(RebalanceJsonTest, DecisionListsCandidatesWithTheChosenOne) {
  RebalanceDecision d{
      .ns = "users", .shard = 42, .from = "a", .to = "c", .chooser = "fewest-pending"};
  d.candidates = {Known("b", 5, 1), Known("c", 1, 1), Unknown("d", 3)};
  auto json = d.ToJson();
  ASSERT_EQ(json["candidates"].size(), 3u);
  EXPECT_EQ(json["candidates"][1]["chosen"], true);
  EXPECT_EQ(json["candidates"][0]["chosen"], false);
  EXPECT_TRUE(json["candidates"][2]["pending"].is_null()) << "unknown load shows as null";
}

}  // namespace
}  // namespace omnirelay::shards
