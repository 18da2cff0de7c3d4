#include "omnirelay/replication/recovery.h"

#include <gtest/gtest.h>

#include <random>

#include "omnirelay/replication/deterministic.h"
#include "omnirelay/replication/durable_replicators.h"
#include "omnirelay/replication/test_util.h"

namespace omnirelay::replication {
namespace {

using resourcelease::ItemPayload;
using resourcelease::Queue;
using resourcelease::QueueOptions;

std::shared_ptr<Queue> NewQueue(std::shared_ptr<core::Clock> clock, Replicator& log) {
  auto q = Queue::Create(
      QueueOptions{
          .name = "default", .lease_duration = std::chrono::seconds(10), .max_attempts = 3},
      std::move(clock));
  EXPECT_TRUE(q.ok());
  (*q)->SetObserver([&log](const resourcelease::MutationEvent& m) {
    auto s = log.Publish(FromMutation("default", m));
    EXPECT_TRUE(s.ok()) << s;
  });
  return *q;
}

ItemPayload Item(int i, int priority = 0) {
  ItemPayload p;
  p.resource_type = "job";
  p.resource_id = "r" + std::to_string(i);
  p.request_id = "req-" + std::to_string(i);
  p.priority = priority;
  return p;
}

std::vector<std::string> RequestIds(const std::vector<resourcelease::ItemRecord>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.payload.request_id);
  return out;
}

absl::StatusOr<resourcelease::RecoveredState> Fold(Replicator& log) {
  RecoveryFold fold;
  auto report = ReplayLog(log, "default", {}, fold);
  if (!report.ok()) return report.status();
  return fold.Finish();
}

TEST(Recovery, RebuildsPendingDeadAndCompletedAndContinuesTheSequence) {
  auto clock = std::make_shared<core::ManualClock>();
  MemoryReplicator log;
  auto q = NewQueue(clock, log);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(q->Enqueue(Item(i, i % 2)).ok());
  auto l1 = *q->TryLease("w1");  // req-1 (priority 1 first)
  ASSERT_TRUE(q->Complete(l1->item_id, l1->fencing_token, "w1").ok());
  auto l2 = *q->TryLease("w1");  // req-3: fails 3 times -> dead letter
  ASSERT_TRUE(q->Fail(l2->item_id, l2->fencing_token, "w1", "bad", /*requeue=*/false).ok());
  auto l3 = *q->TryLease("w2");  // req-5: still leased at the "crash"
  ASSERT_TRUE(l3.has_value());
  auto l4 = *q->TryLease("w2");  // req-7 fails once: back of its priority
  ASSERT_TRUE(q->Fail(l4->item_id, l4->fencing_token, "w2", "retry").ok());
  const auto before_pending = RequestIds(q->Pending());
  const auto before_dead = RequestIds(q->DeadLetters());
  const auto last_seq = q->Stats().sequence;

  auto state = Fold(log);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->sequence, last_seq);
  auto fresh = Queue::Create(QueueOptions{.name = "default", .max_attempts = 3}, clock);
  ASSERT_TRUE(fresh.ok());
  auto& r = *fresh;
  r->SetObserver([&log](const resourcelease::MutationEvent& m) {
    ASSERT_TRUE(log.Publish(FromMutation("default", m)).ok());  // gap-free continuation
  });
  ASSERT_TRUE(r->Recover(*state).ok());
  // The leased item (req-5) comes back pending behind the others of its priority.
  std::vector<std::string> want = before_pending;
  want.insert(want.begin() + 1, "req-5");  // priority 1: req-7 requeued after req-5's lease
  auto got = RequestIds(r->Pending());
  std::sort(want.begin(), want.end());
  auto sorted_got = got;
  std::sort(sorted_got.begin(), sorted_got.end());
  EXPECT_EQ(sorted_got, want);
  EXPECT_EQ(RequestIds(r->DeadLetters()), before_dead);
  // Priority order is kept: the priority-1 items come first.
  ASSERT_GE(got.size(), 2u);
  EXPECT_EQ(got[0], "req-5");
  EXPECT_EQ(got[1], "req-7");
  // The completed RequestId stays deduplicated; a live one too.
  auto dup = r->Enqueue(Item(1, 1));
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE(dup->duplicate);
  EXPECT_EQ(dup->state, "completed");
  EXPECT_TRUE(r->Enqueue(Item(0))->duplicate);
  // The worker that held req-5 before the crash has a stale token now.
  auto stale = r->Complete(l3->item_id, l3->fencing_token, "w2");
  EXPECT_FALSE(stale.ok());
  auto next = *r->TryLease("w3");
  ASSERT_TRUE(next.has_value());
  EXPECT_GT(next->fencing_token, l4->fencing_token);
  EXPECT_GT(r->Stats().sequence, last_seq);
}

TEST(Recovery, RandomHistoriesRecoverToTheSameQueue) {
  for (int seed = 1; seed <= 25; ++seed) {
    std::mt19937 rng(static_cast<unsigned>(seed));
    auto clock = std::make_shared<core::ManualClock>();
    MemoryReplicator log;
    auto q = NewQueue(clock, log);
    std::vector<resourcelease::Lease> held;
    int next = 0;
    for (int step = 0; step < 300; ++step) {
      switch (rng() % 6) {
        case 0:
        case 1:
          ASSERT_TRUE(q->Enqueue(Item(next++, static_cast<int>(rng() % 3))).ok());
          break;
        case 2:
          if (auto l = q->TryLease("w"); l.ok() && l->has_value()) held.push_back(**l);
          break;
        case 3:
          if (!held.empty()) {
            auto l = held[rng() % held.size()];
            (void)q->Complete(l.item_id, l.fencing_token, "w");
          }
          break;
        case 4:
          if (!held.empty()) {
            auto l = held[rng() % held.size()];
            (void)q->Fail(l.item_id, l.fencing_token, "w", "x", rng() % 4 != 0);
          }
          break;
        case 5:
          clock->Advance(std::chrono::seconds(rng() % 12));  // expiries
          q->ExpireDue();
          break;
      }
    }
    auto state = Fold(log);
    ASSERT_TRUE(state.ok()) << state.status();
    auto r = *Queue::Create(QueueOptions{.name = "default", .max_attempts = 3}, clock);
    ASSERT_TRUE(r->Recover(*state).ok());
    // Every live item survives exactly once: pending + active before ==
    // pending after; dead letters equal.
    std::vector<std::string> live = RequestIds(q->Pending());
    for (const auto& l : q->ActiveLeases()) live.push_back(l.payload.request_id);
    auto after = RequestIds(r->Pending());
    std::sort(live.begin(), live.end());
    std::sort(after.begin(), after.end());
    EXPECT_EQ(after, live) << "seed " << seed;
    auto dead_before = RequestIds(q->DeadLetters());
    auto dead_after = RequestIds(r->DeadLetters());
    std::sort(dead_before.begin(), dead_before.end());
    std::sort(dead_after.begin(), dead_after.end());
    EXPECT_EQ(dead_after, dead_before) << "seed " << seed;
    EXPECT_EQ(r->Stats().sequence, q->Stats().sequence);
  }
}

TEST(Recovery, ACorruptLogStopsTheReplay) {
  testing::TempDir dir;
  auto clock = std::make_shared<core::ManualClock>();
  {
    auto log = SqliteReplicator::Open({.path = dir / "log.db", .full_sync = false});
    ASSERT_TRUE(log.ok());
    auto q = NewQueue(clock, **log);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(q->Enqueue(Item(i)).ok());
    ASSERT_TRUE((*log)->Flush().ok());
  }
  {
    auto db = sqlite::Open(dir / "log.db", false);
    ASSERT_TRUE(sqlite::Exec(db->get(),
                             "UPDATE lease_events SET event = replace(event, 'req-3', 'req-9')"
                             " WHERE sequence = 4")
                    .ok());
  }
  auto log = SqliteReplicator::Open({.path = dir / "log.db", .full_sync = false});
  ASSERT_TRUE(log.ok());
  auto state = Fold(**log);
  EXPECT_EQ(state.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(state.status().message().find("sequence 4"), std::string_view::npos);
}

TEST(Recovery, RecoverRefusesANonFreshQueue) {
  auto clock = std::make_shared<core::ManualClock>();
  auto q = *Queue::Create(QueueOptions{}, clock);
  ASSERT_TRUE(q->Enqueue(Item(1)).ok());
  EXPECT_EQ(q->Recover({}).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace omnirelay::replication
