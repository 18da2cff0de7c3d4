#include <gtest/gtest.h>

#include <thread>

#include "omnirelay/backpressure/hub.h"
#include "omnirelay/backpressure/shard_source.h"
#include "omnirelay/backpressure/signal_middleware.h"
#include "omnirelay/backpressure/watermark.h"
#include "omnirelay/core/retry_after.h"

namespace omnirelay::backpressure {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(WatermarkStateMachine, EntersAtHighLeavesAtLowWithHysteresis) {
  core::ManualClock clock;
  WatermarkStateMachine m({.high = 10, .low = 4});
  EXPECT_FALSE(m.Update(9, clock.Now()).has_value());
  EXPECT_FALSE(m.active());
  auto on = m.Update(10, clock.Now());
  ASSERT_TRUE(on.has_value());
  EXPECT_TRUE(*on);
  // Between the watermarks: the state holds (no flapping around high).
  EXPECT_FALSE(m.Update(9, clock.Now()).has_value());
  EXPECT_FALSE(m.Update(5, clock.Now()).has_value());
  EXPECT_FALSE(m.Update(11, clock.Now()).has_value());
  EXPECT_TRUE(m.active());
  auto off = m.Update(4, clock.Now());
  ASSERT_TRUE(off.has_value());
  EXPECT_FALSE(*off);
  // Between the watermarks again: stays normal until high.
  EXPECT_FALSE(m.Update(9, clock.Now()).has_value());
  EXPECT_FALSE(m.active());
  EXPECT_EQ(m.transitions(), 2u);
}

TEST(WatermarkStateMachine, MinHoldDelaysClearing) {
  core::ManualClock clock;
  WatermarkStateMachine m({.high = 10, .low = 4, .min_hold = seconds(5)});
  ASSERT_TRUE(m.Update(12, clock.Now()).value());
  clock.Advance(seconds(4));
  EXPECT_FALSE(m.Update(0, clock.Now()).has_value());  // held
  EXPECT_TRUE(m.active());
  clock.Advance(seconds(1));
  auto off = m.Update(0, clock.Now());
  ASSERT_TRUE(off.has_value());
  EXPECT_FALSE(*off);
  EXPECT_EQ(m.since(), clock.Now());
}

struct HubFixture : ::testing::Test {
  std::shared_ptr<core::ManualClock> clock = std::make_shared<core::ManualClock>();
  std::shared_ptr<core::MetricsRegistry> metrics = std::make_shared<core::MetricsRegistry>();
  std::shared_ptr<BackpressureHub> hub = std::make_shared<BackpressureHub>("a", clock, metrics);
  double Metric(std::string_view name, const core::Tags& tags = {}) {
    return metrics->Total(name, tags);
  }
};

TEST_F(HubFixture, LocalSourceDrivesLocalAndThrottling) {
  std::vector<std::pair<bool, bool>> seen;
  hub->AddListener([&](const HubState& s) { seen.emplace_back(s.local, s.throttling); });
  // (local, throttling) pairs
  hub->SetSource("resourcelease/jobs", false);
  EXPECT_TRUE(seen.empty());
  hub->SetSource("resourcelease/jobs", true);
  EXPECT_TRUE(hub->local());
  EXPECT_TRUE(hub->throttling());
  hub->SetSource("resourcelease/jobs", true);  // no duplicate transition
  hub->SetSource("resourcelease/jobs", false);
  EXPECT_FALSE(hub->local());
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], std::make_pair(true, true));
  EXPECT_EQ(seen[1], std::make_pair(false, false));
  EXPECT_EQ(
      Metric("omnirelay.backpressure.transitions",
             {{"backpressure.scope", "local"}, {"backpressure.source", "resourcelease/jobs"}}),
      2);
}

TEST_F(HubFixture, LevelSourceUsesWatermarks) {
  hub->AddLevelSource("shard/42", {.high = 100, .low = 50, .min_hold = seconds(1)});
  hub->UpdateLevel("shard/42", 99);
  EXPECT_FALSE(hub->local());
  hub->UpdateLevel("shard/42", 120);
  EXPECT_TRUE(hub->local());
  hub->UpdateLevel("shard/42", 10);  // below low, but within min_hold
  EXPECT_TRUE(hub->local());
  clock->Advance(seconds(1));
  hub->UpdateLevel("shard/42", 10);
  EXPECT_FALSE(hub->local());
  EXPECT_EQ(hub->ToJson()["sources"]["shard/42"]["transitions"], 2);
}

TEST_F(HubFixture, RemoteMemberThrottlesButIsNotLocal) {
  hub->SetRemote("b", false);
  EXPECT_FALSE(hub->throttling());
  hub->SetRemote("b", true);
  EXPECT_TRUE(hub->throttling());
  EXPECT_TRUE(hub->remote());
  EXPECT_FALSE(hub->local());
  hub->SetRemote("a", true);  // own id from gossip is ignored
  EXPECT_FALSE(hub->local());
  auto json = hub->ToJson();
  EXPECT_EQ(json["members"]["b"]["active"], true);
  EXPECT_EQ(json["members"]["a"]["active"], false);
  hub->Forget("b");
  EXPECT_FALSE(hub->throttling());
  EXPECT_EQ(Metric("omnirelay.backpressure.throttling"), 0);
}

TEST_F(HubFixture, StreamFollowsTransitionsWithCursor) {
  std::uint64_t cursor = hub->Cursor();
  EXPECT_FALSE(hub->Next(cursor, milliseconds(1)).has_value());
  hub->SetRemote("b", true);
  hub->SetRemote("b", false);
  auto first = hub->Next(cursor, milliseconds(1));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ((*first)["member"], "b");
  EXPECT_EQ((*first)["active"], true);
  auto second = hub->Next(cursor, milliseconds(1));
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ((*second)["active"], false);
  std::thread closer([&] { hub->Close(); });
  EXPECT_FALSE(hub->Next(cursor, seconds(10)).has_value());
  closer.join();
}

TEST_F(HubFixture, MiddlewareSignalsInResponses) {
  BackpressureSignalMiddleware mw(hub, seconds(2));
  dispatcher::CallInfo info;
  auto run = [&](absl::StatusOr<dispatcher::Response> answer) {
    absl::StatusOr<dispatcher::Response> got = absl::UnknownError("not called");
    mw.HandleUnary(
        info, dispatcher::Request{},
        [&](absl::StatusOr<dispatcher::Response> r) { got = std::move(r); },
        [&](dispatcher::Request, dispatcher::UnaryCallback done) { done(answer); });
    return got;
  };
  auto ok = run(dispatcher::Response{});
  ASSERT_TRUE(ok.ok());
  EXPECT_FALSE(ok->headers.Contains(kResponseHeader));
  auto refused = run(absl::ResourceExhaustedError("full"));
  EXPECT_FALSE(core::RetryAfter(refused.status()).has_value());  // not throttling: untouched

  hub->SetSource("q", true);
  ok = run(dispatcher::Response{});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->headers.Get(kResponseHeader).value_or(""), "node=a");
  refused = run(absl::ResourceExhaustedError("full"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core::RetryAfter(refused.status()).value_or(milliseconds(0)), milliseconds(2000));
  EXPECT_EQ(core::Backpressure(refused.status()).value_or(""), "node=a");
  // A refusal with its own hint keeps it.
  refused = run(core::WithRetryAfter(absl::ResourceExhaustedError("q"), milliseconds(300)));
  EXPECT_EQ(core::RetryAfter(refused.status()).value_or(milliseconds(0)), milliseconds(300));
  EXPECT_EQ(Metric("omnirelay.backpressure.throttled"), 2);
  // Throttling because of a member (not local): no header, but retry-after.
  hub->SetSource("q", false);
  hub->SetRemote("b", true);
  ok = run(dispatcher::Response{});
  EXPECT_FALSE(ok->headers.Contains(kResponseHeader));
  refused = run(absl::ResourceExhaustedError("rate-limited"));
  EXPECT_TRUE(core::RetryAfter(refused.status()).has_value());
  EXPECT_EQ(core::Backpressure(refused.status()).value_or(""), "upstream=a");
}

// Queues, gossip and readers hit the hub from many threads (TSan label).
TEST_F(HubFixture, ConcurrentSourcesMembersAndReadersEndConsistent) {
  std::atomic<int> listener_calls{0};
  hub->AddListener([&](const HubState&) { listener_calls.fetch_add(1); });
  std::atomic<bool> done{false};
  std::thread reader([&] {
    std::uint64_t cursor = 0;
    while (!done.load()) {
      hub->Next(cursor, milliseconds(1));
      (void)hub->ToJson();
    }
  });
  std::vector<std::thread> writers;
  const std::vector<std::string> names = {"q0", "m1", "q2", "m3"};
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        const bool on = i % 2 == 0;
        if (t % 2 == 0) {
          hub->SetSource(names[t], on);
        } else {
          hub->SetRemote(names[t], on);
        }
        (void)hub->throttling();
      }
    });
  }
  for (auto& w : writers) w.join();
  done.store(true);
  reader.join();
  // Every writer ended on "off" (i = 499 is odd).
  EXPECT_FALSE(hub->local());
  EXPECT_FALSE(hub->throttling());
  EXPECT_GT(listener_calls.load(), 0);
  EXPECT_EQ(Metric("omnirelay.backpressure.throttling"), 0);
}

TEST_F(HubFixture, ShardOverBudgetIsALevelSourceWithHysteresis) {
  shards::NamespaceOptions ns;
  ns.spec.ns = "orders";
  ns.spec.shard_count = 8;
  ns.budget_qps = 10;
  auto router = std::make_shared<shards::ShardRouter>(
      "a", std::vector<shards::NamespaceOptions>{ns}, std::make_shared<shards::ShardMapHolder>(),
      [](std::string_view) { return true; }, clock);
  auto sampler = std::make_shared<ShardPressureSampler>(
      router, hub, clock,
      ShardPressureOptions{.low_ratio = 0.5, .min_hold = seconds(1), .interval = seconds(1)});
  sampler->Start();
  // 20 calls/s on shard 3 for 4 s: QPS (mean of 3 complete seconds) 20 > budget 10.
  for (int second = 0; second < 4; ++second) {
    for (int i = 0; i < 20; ++i) router->RecordServed("orders", 3);
    clock->Advance(seconds(1));  // the sampler runs once per second
  }
  EXPECT_TRUE(hub->local());
  const auto source = ShardPressureSampler::SourceName("orders", 3);
  EXPECT_TRUE(hub->ToJson()["sources"][source]["active"]);
  EXPECT_FALSE(hub->ToJson()["sources"].contains(ShardPressureSampler::SourceName("orders", 2)));
  // The owner's own admission reads this flag (shard_outbound_test drives it).
  EXPECT_TRUE(router->meter("orders")->Pressured(3));
  EXPECT_FALSE(router->meter("orders")->Pressured(2));
  // 7 calls/s: between low (5) and high (10): still under backpressure.
  for (int second = 0; second < 4; ++second) {
    for (int i = 0; i < 7; ++i) router->RecordServed("orders", 3);
    clock->Advance(seconds(1));
  }
  EXPECT_TRUE(hub->local());
  // Idle: QPS falls to 0 <= low: clears.
  clock->Advance(seconds(4));
  EXPECT_FALSE(hub->local());
  EXPECT_FALSE(router->meter("orders")->Pressured(3));
  EXPECT_EQ(hub->ToJson()["sources"][source]["transitions"], 2);
  sampler->Stop();
  clock->Advance(seconds(2));
  EXPECT_EQ(clock->pending_timers(), 0u);
}

TEST_F(HubFixture, TheSamplerReadsTheRuntimeBudgetOverride) {
  shards::NamespaceOptions ns;
  ns.spec.ns = "orders";
  ns.spec.shard_count = 8;
  ns.budget_qps = 100;  // configured: 20 calls/s is far below it
  auto router = std::make_shared<shards::ShardRouter>(
      "a", std::vector<shards::NamespaceOptions>{ns}, std::make_shared<shards::ShardMapHolder>(),
      [](std::string_view) { return true; }, clock);
  auto sampler = std::make_shared<ShardPressureSampler>(
      router, hub, clock,
      ShardPressureOptions{.low_ratio = 0.5, .min_hold = seconds(1), .interval = seconds(1)});
  sampler->Start();
  const auto source = ShardPressureSampler::SourceName("orders", 3);
  auto drive = [&](int qps, int seconds_long) {
    for (int second = 0; second < seconds_long; ++second) {
      for (int i = 0; i < qps; ++i) router->RecordServed("orders", 3);
      clock->Advance(seconds(1));
    }
  };
  drive(20, 4);
  EXPECT_FALSE(hub->local());
  // SetShardBudget: 10 calls/s for the namespace. The source (already known
  // at budget 100) gets the new watermarks and crosses the high one.
  shards::BudgetOverride budgets;
  budgets.ns_qps = 10;
  router->ApplyBudgets("orders", budgets);
  drive(20, 2);
  EXPECT_TRUE(hub->local());
  EXPECT_TRUE(router->meter("orders")->Pressured(3));
  EXPECT_EQ(hub->ToJson()["sources"][source]["highWatermark"], 10);
  // A shard of a namespace configured without a budget: sampled once an
  // override gives it one.
  shards::NamespaceOptions free_ns;
  free_ns.spec.ns = "free";
  free_ns.spec.shard_count = 4;
  auto free_router = std::make_shared<shards::ShardRouter>(
      "a", std::vector<shards::NamespaceOptions>{free_ns},
      std::make_shared<shards::ShardMapHolder>(), [](std::string_view) { return true; }, clock);
  auto free_sampler = std::make_shared<ShardPressureSampler>(
      free_router, hub, clock,
      ShardPressureOptions{.low_ratio = 0.5, .min_hold = seconds(1), .interval = seconds(1)});
  free_sampler->Start();
  shards::BudgetOverride one_shard;
  one_shard.shard_qps[1] = 5;
  free_router->ApplyBudgets("free", one_shard);
  for (int second = 0; second < 4; ++second) {
    for (int i = 0; i < 12; ++i) free_router->RecordServed("free", 1);
    for (int i = 0; i < 12; ++i) free_router->RecordServed("free", 2);  // no budget: never a source
    clock->Advance(seconds(1));
  }
  EXPECT_TRUE(free_router->meter("free")->Pressured(1));
  EXPECT_FALSE(free_router->meter("free")->Pressured(2));
  EXPECT_FALSE(hub->ToJson()["sources"].contains(ShardPressureSampler::SourceName("free", 2)));
  sampler->Stop();
  free_sampler->Stop();
  clock->Advance(seconds(2));
  EXPECT_EQ(clock->pending_timers(), 0u);
}

}  // namespace
}  // namespace omnirelay::backpressure
