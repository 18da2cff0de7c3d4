#include "omnirelay/replication/deterministic.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "omnirelay/replication/recovery.h"
#include "omnirelay/replication/test_util.h"

namespace omnirelay::replication {
namespace {

using testing::MakeEvent;
using testing::TempDir;

DeterministicRecord Rec(std::string id, std::string payload = R"({"x":1})") {
  return {.effect_id = std::move(id),
          .kind = "enqueue",
          .version = 1,
          .payload = std::move(payload),
          .recorded_at_us = 5};
}

// The same contract for every store.
class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::shared_ptr<DeterministicStateStore> Make() {
    const std::string kind = GetParam();
    if (kind == "memory") return std::make_shared<MemoryDeterministicStore>();
    if (kind == "sqlite") return *SqliteDeterministicStore::Open({.path = dir_ / "effects.db"});
    return *FileSystemDeterministicStore::Open({.root = dir_ / "effects"});
  }
  TempDir dir_;
};

TEST_P(StoreTest, TryAddAddsOnceAndKeepsTheFirstRecord) {
  auto store = Make();
  auto first = store->TryAdd(Rec("resourcelease.q/seq/1"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(*first);
  auto second = store->TryAdd(Rec("resourcelease.q/seq/1", R"({"x":2})"));
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(*second);
  auto got = store->Get("resourcelease.q/seq/1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->payload, R"({"x":1})");
  EXPECT_EQ((*got)->kind, "enqueue");
  EXPECT_FALSE(store->Get("resourcelease.q/seq/2")->has_value());
  EXPECT_EQ(*store->Count(), 1u);
}

TEST_P(StoreTest, TryAddManyAnswersPerRecord) {
  auto store = Make();
  ASSERT_TRUE(store->TryAdd(Rec("b")).ok());
  std::vector<DeterministicRecord> batch = {Rec("a"), Rec("b"), Rec("c")};
  auto added = store->TryAddMany(batch);
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(*added, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(*store->EffectIds(), (std::vector<std::string>{"a", "b", "c"}));
}

TEST_P(StoreTest, ConcurrentTryAddOfTheSameIdsWinsExactlyOnce) {
  auto store = Make();
  constexpr int kThreads = 4;
  constexpr int kIds = 150;
  std::atomic<int> wins[kIds] = {};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIds; ++i) {
        // Each thread walks the ids from another offset: real contention.
        const int id = (i + t * 37) % kIds;
        auto added = store->TryAdd(Rec("c/seq/" + std::to_string(id)));
        ASSERT_TRUE(added.ok()) << added.status();
        if (*added) wins[id].fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kIds; ++i) EXPECT_EQ(wins[i].load(), 1) << "effect " << i;
  EXPECT_EQ(*store->Count(), static_cast<std::uint64_t>(kIds));
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreTest, ::testing::Values("memory", "sqlite", "file"),
                         [](const auto& info) { return info.param; });

TEST(SqliteDeterministicStore, TwoConnectionsToOneFileStillAddOnce) {
  // Two handles = two connections (as two processes would have): the
  // primary key decides, not our mutex.
  TempDir dir;
  auto a = SqliteDeterministicStore::Open({.path = dir / "e.db"});
  auto b = SqliteDeterministicStore::Open({.path = dir / "e.db"});
  ASSERT_TRUE(a.ok() && b.ok());
  std::atomic<int> wins{0};
  auto run = [&](std::shared_ptr<SqliteDeterministicStore> s) {
    for (int i = 0; i < 200; ++i) {
      auto added = s->TryAdd(Rec("x/" + std::to_string(i)));
      ASSERT_TRUE(added.ok()) << added.status();
      if (*added) wins.fetch_add(1);
    }
  };
  std::thread ta(run, *a);
  std::thread tb(run, *b);
  ta.join();
  tb.join();
  EXPECT_EQ(wins.load(), 200);
}

TEST(FileSystemDeterministicStore, OneReadableJsonFilePerEffect) {
  TempDir dir;
  auto store = FileSystemDeterministicStore::Open({.root = dir.path()});
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE(*(*store)->TryAdd(Rec("resourcelease.q/seq/7")));
  EXPECT_EQ(FileSystemDeterministicStore::FileName("resourcelease.q/seq/7"),
            "resourcelease.q%2Fseq%2F7.json");
  EXPECT_TRUE(std::filesystem::exists(dir / "resourcelease.q%2Fseq%2F7.json"));
  // No temporaries left behind.
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1u);
  EXPECT_EQ(*(*store)->EffectIds(), std::vector<std::string>{"resourcelease.q/seq/7"});
}

TEST(DeterministicCoordinator, EffectIdsFollowTheFormat) {
  auto clock = std::make_shared<core::ManualClock>();
  auto store = std::make_shared<MemoryDeterministicStore>();
  DeterministicCoordinator plain(store, {}, clock);
  EXPECT_EQ(plain.EffectId(MakeEvent("billing", 12)), "resourcelease.billing/seq/12");
  DeterministicCoordinator per_resource(
      store,
      {.change_id = "mesh.us-east", .effect_id_format = "{changeId}/resource/{resourceId}/seq/{n}"},
      clock);
  EXPECT_EQ(per_resource.EffectId(MakeEvent("q", 3)), "mesh.us-east/resource/t-3/seq/3");
  EXPECT_TRUE(ValidateDeterministicOptions({}).ok());
  EXPECT_FALSE(ValidateDeterministicOptions({.effect_id_format = "{changeId}/x"}).ok());
  EXPECT_FALSE(ValidateDeterministicOptions({.effect_id_format = "{changeId}/{bogus}/{n}"}).ok());
  EXPECT_FALSE(ValidateDeterministicOptions({.change_id = "{changeId}"}).ok());
}

TEST(DeterministicCoordinator, ReplayRecordsEachEffectOnceAndCountsHitsAndMisses) {
  TempDir dir;
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  auto store = SqliteDeterministicStore::Open({.path = dir / "e.db"});
  ASSERT_TRUE(store.ok());
  auto coordinator =
      std::make_shared<DeterministicCoordinator>(*store, DeterministicOptions{}, clock, metrics);
  // Live: the first 6 events were recorded before the "crash".
  for (std::uint64_t s = 1; s <= 6; ++s) ASSERT_TRUE(coordinator->Apply(MakeEvent("q", s)).ok());
  // Replay the whole log of 10 events.
  MemoryReplicator log;
  for (std::uint64_t s = 1; s <= 10; ++s) ASSERT_TRUE(log.Publish(MakeEvent("q", s)).ok());
  RecoveryFold fold;
  auto report = ReplayLog(log, "q", {coordinator}, fold, coordinator.get(), /*batch=*/4);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->events, 10u);
  EXPECT_EQ(report->effects_skipped, 6u);
  EXPECT_EQ(report->effects_recorded, 4u);
  EXPECT_EQ(*(*store)->Count(), 10u);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.deterministic.try_add.hits"), 6);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.deterministic.try_add.misses"), 10);
  // A second replay changes nothing.
  RecoveryFold again;
  report = ReplayLog(log, "q", {coordinator}, again, coordinator.get());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->effects_skipped, 10u);
  EXPECT_EQ(report->effects_recorded, 0u);
  // The record of a replayed event equals the live one (no replay flag inside).
  auto rec = (*store)->Get("resourcelease.q/seq/8");
  ASSERT_TRUE(rec.ok() && rec->has_value());
  EXPECT_EQ((*rec)->payload.find("lease.replay"), std::string::npos);
  bool latency_seen = false;
  for (const auto& p : metrics->Snapshot()) {
    if (p.name == "omnirelay.resourcelease.deterministic.store.latency") latency_seen = true;
  }
  EXPECT_TRUE(latency_seen);
}

}  // namespace
}  // namespace omnirelay::replication
