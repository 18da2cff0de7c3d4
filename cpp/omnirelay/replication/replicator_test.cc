#include "omnirelay/replication/replicator.h"

#include <gtest/gtest.h>

#include <thread>

#include "omnirelay/core/status.h"
#include "omnirelay/replication/metrics.h"
#include "omnirelay/replication/test_util.h"

namespace omnirelay::replication {
namespace {

using testing::MakeEvent;

TEST(MemoryReplicator, KeepsOrderAndRejectsGapsAndRepeats) {
  MemoryReplicator r;
  ASSERT_TRUE(r.Publish(MakeEvent("a", 1)).ok());
  ASSERT_TRUE(r.Publish(MakeEvent("b", 1)).ok());  // sequences are per queue
  ASSERT_TRUE(r.Publish(MakeEvent("a", 2)).ok());
  auto gap = r.Publish(MakeEvent("a", 4));
  EXPECT_EQ(gap.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core::ErrorCode(gap).value_or(""), kErrOutOfOrder);
  EXPECT_EQ(r.Publish(MakeEvent("a", 2)).code(), absl::StatusCode::kFailedPrecondition);
  std::vector<std::uint64_t> seen;
  ASSERT_TRUE(r.Read("a", 0, [&](const ReplicationEvent& e) {
                 seen.push_back(e.sequence);
                 return absl::OkStatus();
               }).ok());
  EXPECT_EQ(seen, (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(*r.LastSequence("a"), 2u);
  EXPECT_EQ(*r.LastSequence("nope"), 0u);
}

TEST(MemoryReplicator, ConcurrentPublishersThroughOneLockStayGapFree) {
  // Publishers serialise on the queue's lock in production; here a mutex.
  MemoryReplicator r;
  auto sink = std::make_shared<RecordingSink>();
  r.AddSink(sink);
  std::mutex queue_lock;
  std::uint64_t next = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        std::lock_guard lock(queue_lock);
        ASSERT_TRUE(r.Publish(MakeEvent("q", ++next)).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  auto events = sink->Events();
  ASSERT_EQ(events.size(), 2000u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence, i + 1);
}

TEST(ShardedReplicator, TagsShardId) {
  auto inner = std::make_shared<MemoryReplicator>();
  ShardedReplicator users(inner, "users");
  ShardedReplicator billing(inner, "billing");
  ASSERT_TRUE(users.Publish(MakeEvent("users", 1)).ok());
  ASSERT_TRUE(billing.Publish(MakeEvent("billing", 1)).ok());
  auto events = inner->Events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].shard_id, "users");
  EXPECT_EQ(events[0].metadata.at(kShardTag), "users");
  EXPECT_EQ(events[1].metadata.at(kShardTag), "billing");
}

TEST(CompositeReplicator, FansOutAndAcknowledgesWhenAllAreDurable) {
  auto a = std::make_shared<MemoryReplicator>("a");
  auto b = std::make_shared<MemoryReplicator>("b");
  CompositeReplicator both({a, b});
  ASSERT_TRUE(both.Publish(MakeEvent("q", 1)).ok());
  EXPECT_EQ(a->Events().size(), 1u);
  EXPECT_EQ(b->Events().size(), 1u);
  bool acked = false;
  both.WhenDurable("q", 1, [&](absl::Status s) { acked = s.ok(); });
  EXPECT_TRUE(acked);
  // Waiting for an event not yet published answers once it is.
  absl::Status second = absl::UnknownError("not yet");
  both.WhenDurable("q", 2, [&](absl::Status s) { second = s; });
  EXPECT_EQ(second.code(), absl::StatusCode::kUnknown);
  ASSERT_TRUE(both.Publish(MakeEvent("q", 2)).ok());
  EXPECT_TRUE(second.ok());
  EXPECT_EQ(both.Status().queues.at("q").durable, 2u);
}

TEST(CheckpointingSink, DropsWhatItAlreadyAppliedAndCountsMetrics) {
  auto inner = std::make_shared<RecordingSink>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  auto clock = std::make_shared<core::ManualClock>(FromUnixMicros(1'700'000'000'100'000));
  CheckpointingSink sink("audit", inner, clock, metrics);
  for (std::uint64_t s = 1; s <= 5; ++s) ASSERT_TRUE(sink.Apply(MakeEvent("q", s)).ok());
  // A replay of the whole log: only what is new passes.
  std::vector<ReplicationEvent> replay;
  for (std::uint64_t s = 1; s <= 7; ++s) {
    replay.push_back(MakeEvent("q", s));
    replay.back().metadata[kReplayTag] = "true";
  }
  ASSERT_TRUE(sink.ApplyBatch(replay).ok());
  auto seen = inner->Events();
  ASSERT_EQ(seen.size(), 7u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].sequence, i + 1);
  EXPECT_TRUE(seen[5].replay());
  auto cps = sink.Checkpoints();
  ASSERT_EQ(cps.size(), 1u);
  EXPECT_EQ(cps[0].sequence, 7u);
  EXPECT_EQ(cps[0].applied, 7u);
  EXPECT_EQ(cps[0].duplicates, 5u);
  EXPECT_EQ(cps[0].replayed, 2u);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.replication.events"), 7);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.replication.events", {{kReplayTag, "true"}}),
            2);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.replication.duplicates"), 5);
  bool lag_seen = false;
  for (const auto& p : metrics->Snapshot()) {
    if (p.name == "omnirelay.resourcelease.replication.lag") {
      lag_seen = true;
      EXPECT_EQ(p.histogram.count, 5u);  // live events only
    }
  }
  EXPECT_TRUE(lag_seen);
}

class FailingSink : public ReplicationSink {
 public:
  std::string name() const override { return "failing"; }
  absl::Status Apply(const ReplicationEvent&) override {
    return fail ? absl::UnavailableError("down") : absl::OkStatus();
  }
  bool fail = true;
};

TEST(CheckpointingSink, AFailedInnerSinkDoesNotAdvanceTheCheckpoint) {
  auto inner = std::make_shared<FailingSink>();
  auto clock = std::make_shared<core::ManualClock>();
  CheckpointingSink sink("cp", inner, clock);
  EXPECT_FALSE(sink.Apply(MakeEvent("q", 1)).ok());
  EXPECT_EQ(sink.Last("q"), 0u);
  inner->fail = false;
  EXPECT_TRUE(sink.Apply(MakeEvent("q", 1)).ok());
  EXPECT_EQ(sink.Last("q"), 1u);
}

TEST(CheckpointingSink, ConcurrentReplaysApplyEachSequenceOnce) {
  auto inner = std::make_shared<RecordingSink>();
  auto clock = std::make_shared<core::ManualClock>();
  CheckpointingSink sink("cp", inner, clock);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (std::uint64_t s = 1; s <= 300; ++s) ASSERT_TRUE(sink.Apply(MakeEvent("q", s)).ok());
    });
  }
  for (auto& t : threads) t.join();
  auto seen = inner->Events();
  ASSERT_EQ(seen.size(), 300u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].sequence, i + 1);
}

}  // namespace
}  // namespace omnirelay::replication
