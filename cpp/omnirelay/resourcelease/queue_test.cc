#include "omnirelay/resourcelease/queue.h"

#include <gtest/gtest.h>

#include "omnirelay/resourcelease/metrics.h"

namespace omnirelay::resourcelease {
namespace {

using std::chrono::seconds;

struct Fixture : ::testing::Test {
  std::shared_ptr<core::ManualClock> clock = std::make_shared<core::ManualClock>();
  std::shared_ptr<Queue> Make(QueueOptions options = {},
                              std::shared_ptr<core::MetricsRegistry> metrics = nullptr) {
    auto q = Queue::Create(std::move(options), clock, std::move(metrics));
    EXPECT_TRUE(q.ok()) << q.status();
    return *q;
  }
  static ItemPayload Item(std::string request_id, int priority = 0) {
    return ItemPayload{.resource_type = "table",
                       .resource_id = "t-" + request_id,
                       .partition_key = "p",
                       .attributes = {{"k", "v"}},
                       .body = "body-" + request_id,
                       .request_id = std::move(request_id),
                       .priority = priority};
  }
  static Lease MustLease(Queue& q, std::string_view owner) {
    auto lease = q.TryLease(owner);
    EXPECT_TRUE(lease.ok()) << lease.status();
    EXPECT_TRUE(lease->has_value());
    return **lease;
  }
};

TEST_F(Fixture, EnqueueLeaseCompleteCarriesThePayload) {
  auto q = Make();
  auto e = q->Enqueue(Item("r1"));
  ASSERT_TRUE(e.ok());
  EXPECT_FALSE(e->duplicate);
  Lease lease = MustLease(*q, "worker-a");
  EXPECT_EQ(lease.item_id, e->item_id);
  EXPECT_EQ(lease.payload.resource_type, "table");
  EXPECT_EQ(lease.payload.resource_id, "t-r1");
  EXPECT_EQ(lease.payload.attributes.at("k"), "v");
  EXPECT_EQ(lease.payload.body, "body-r1");
  EXPECT_EQ(lease.attempt, 1);
  EXPECT_EQ(lease.owner, "worker-a");
  EXPECT_EQ(lease.expires_at, clock->Now() + seconds(30));
  EXPECT_EQ(q->Stats().active, 1u);
  ASSERT_TRUE(q->Complete(lease.item_id, lease.fencing_token, "worker-a").ok());
  auto s = q->Stats();
  EXPECT_EQ(s.active, 0u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(s.completed, 1u);
  auto none = q->TryLease("worker-a");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(Fixture, SameRequestIdIsOneItemEvenAfterCompletion) {
  auto q = Make();
  auto first = q->Enqueue(Item("same"));
  auto second = q->Enqueue(Item("same"));
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_TRUE(second->duplicate);
  EXPECT_EQ(second->item_id, first->item_id);
  EXPECT_EQ(q->Stats().pending, 1u);
  Lease lease = MustLease(*q, "w");
  ASSERT_TRUE(q->Complete(lease.item_id, lease.fencing_token, "w").ok());
  auto third = q->Enqueue(Item("same"));
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE(third->duplicate);
  EXPECT_EQ(third->state, "completed");
  EXPECT_EQ(q->Stats().pending, 0u);
}

TEST_F(Fixture, CompletedRequestIdsAreRememberedUpToTheRetention) {
  auto q = Make({.completed_retention = 2});
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(q->Enqueue(Item(id)).ok());
    Lease l = MustLease(*q, "w");
    ASSERT_TRUE(q->Complete(l.item_id, l.fencing_token, "w").ok());
  }
  EXPECT_EQ(q->Enqueue(Item("c"))->state, "completed");
  EXPECT_EQ(q->Enqueue(Item("b"))->state, "completed");
  auto a = q->Enqueue(Item("a"));  // evicted: the oldest completed id is forgotten
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->duplicate);
  Lease l = MustLease(*q, "w");
  ASSERT_TRUE(q->Complete(l.item_id, l.fencing_token, "w").ok());
  EXPECT_EQ(q->Enqueue(Item("a"))->state, "completed");
  EXPECT_FALSE(q->Enqueue(Item("b"))->duplicate) << "b was evicted by a";
}

TEST_F(Fixture, PriorityFirstThenFifo) {
  auto q = Make();
  ASSERT_TRUE(q->Enqueue(Item("low1", 0)).ok());
  ASSERT_TRUE(q->Enqueue(Item("high", 5)).ok());
  ASSERT_TRUE(q->Enqueue(Item("low2", 0)).ok());
  EXPECT_EQ(MustLease(*q, "w").payload.request_id, "high");
  EXPECT_EQ(MustLease(*q, "w").payload.request_id, "low1");
  EXPECT_EQ(MustLease(*q, "w").payload.request_id, "low2");
  auto bad = q->Enqueue(Item("bad", 10));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Fixture, ExpiryRequeuesAndStaleTokensAreRejected) {
  auto q = Make({.lease_duration = seconds(10), .max_attempts = 3});
  ASSERT_TRUE(q->Enqueue(Item("r")).ok());
  Lease first = MustLease(*q, "a");
  clock->Advance(seconds(9));
  auto hb = q->Heartbeat(first.item_id, first.fencing_token, "a");
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(*hb, clock->Now() + seconds(10));
  clock->Advance(seconds(9));
  EXPECT_EQ(q->Stats().active, 1u) << "the heartbeat extended the lease";
  clock->Advance(seconds(2));  // expiry timer fires on the manual clock
  auto s = q->Stats();
  EXPECT_EQ(s.active, 0u);
  EXPECT_EQ(s.pending, 1u);
  EXPECT_EQ(s.expired, 1u);
  Lease second = MustLease(*q, "b");
  EXPECT_EQ(second.item_id, first.item_id);
  EXPECT_GT(second.fencing_token, first.fencing_token);
  EXPECT_EQ(second.attempt, 2);
  auto stale = q->Complete(first.item_id, first.fencing_token, "a");
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core::ErrorCode(stale), kErrStaleToken);
  EXPECT_EQ(q->Heartbeat(first.item_id, first.fencing_token, "a").status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto wrong_owner = q->Complete(second.item_id, second.fencing_token, "a");
  EXPECT_EQ(wrong_owner.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(q->Stats().active, 1u) << "rejected calls change nothing";
  EXPECT_TRUE(q->Complete(second.item_id, second.fencing_token, "b").ok());
  EXPECT_EQ(q->Complete(second.item_id, second.fencing_token, "b").code(),
            absl::StatusCode::kNotFound);
}

TEST_F(Fixture, ALeasePastItsExpiryIsDeadBeforeTheTimerRuns) {
  // A clock that moved without running timers (Set runs them; here we call
  // the operation in the same instant the lease ends): expiry is checked
  // inline, so the old owner cannot complete at the expiry instant.
  auto q = Make({.lease_duration = seconds(5)});
  ASSERT_TRUE(q->Enqueue(Item("r")).ok());
  Lease lease = MustLease(*q, "a");
  clock->Advance(seconds(5));
  EXPECT_EQ(q->Complete(lease.item_id, lease.fencing_token, "a").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(Fixture, FailRequeuesUntilRetryLimitThenDeadLettersAndRequeueBringsItBack) {
  auto q = Make({.max_attempts = 2});
  ASSERT_TRUE(q->Enqueue(Item("r")).ok());
  Lease l1 = MustLease(*q, "w");
  auto st = q->Fail(l1.item_id, l1.fencing_token, "w", "boom");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, "pending");
  Lease l2 = MustLease(*q, "w");
  EXPECT_EQ(l2.attempt, 2);
  st = q->Fail(l2.item_id, l2.fencing_token, "w", "boom again");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, "dead-letter");
  auto dead = q->DeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].payload.request_id, "r");
  EXPECT_EQ(dead[0].attempts, 2);
  EXPECT_EQ(dead[0].last_error, "boom again");
  EXPECT_EQ(q->Stats().pending, 0u);
  // Same RequestId while dead-lettered is still the same item.
  auto dup = q->Enqueue(Item("r"));
  ASSERT_TRUE(dup.ok());
  EXPECT_EQ(dup->state, "dead-letter");
  EXPECT_EQ(q->RequeueDeadLetters(), 1u);
  EXPECT_TRUE(q->DeadLetters().empty());
  Lease l3 = MustLease(*q, "w");
  EXPECT_EQ(l3.attempt, 1);
  EXPECT_TRUE(q->Complete(l3.item_id, l3.fencing_token, "w").ok());
}

TEST_F(Fixture, FailWithoutRequeueDeadLettersAtOnce) {
  auto q = Make({.max_attempts = 5});
  ASSERT_TRUE(q->Enqueue(Item("r")).ok());
  Lease l = MustLease(*q, "w");
  auto st = q->Fail(l.item_id, l.fencing_token, "w", "poison", /*requeue=*/false);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, "dead-letter");
}

TEST_F(Fixture, DrainReturnsPendingInOrderAndRestoreKeepsIt) {
  auto q = Make();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(q->Enqueue(Item("r" + std::to_string(i))).ok());
  ASSERT_TRUE(q->Enqueue(Item("urgent", 9)).ok());
  Lease held = MustLease(*q, "w");  // "urgent" stays active across the drain
  EXPECT_EQ(held.payload.request_id, "urgent");
  auto drained = q->Drain();
  ASSERT_EQ(drained.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(drained[i].payload.request_id, "r" + std::to_string(i));
  EXPECT_EQ(q->Enqueue(Item("late")).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(q->TryLease("w").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(q->Complete(held.item_id, held.fencing_token, "w").ok()) << "active leases survive";

  auto other = Make();  // the restarted node
  auto restored = other->Restore(drained);
  ASSERT_TRUE(restored.ok());
  EXPECT_EQ(*restored, 5u);
  EXPECT_EQ(*other->Restore(drained), 0u) << "restoring twice adds nothing";
  for (int i = 0; i < 5; ++i) {
    Lease l = MustLease(*other, "w");
    EXPECT_EQ(l.payload.request_id, "r" + std::to_string(i));
    EXPECT_EQ(l.payload.body, "body-r" + std::to_string(i));
    ASSERT_TRUE(other->Complete(l.item_id, l.fencing_token, "w").ok());
  }
}

TEST_F(Fixture, RestoreKeepsTokensGrowingPerItem) {
  auto a = Make({.lease_duration = seconds(1)});
  ASSERT_TRUE(a->Enqueue(Item("r")).ok());
  for (int i = 0; i < 3; ++i) {
    MustLease(*a, "w");
    clock->Advance(seconds(1));
  }
  auto drained = a->Drain();
  ASSERT_EQ(drained.size(), 1u);
  EXPECT_EQ(drained[0].attempts, 3);
  auto b = Make();
  ASSERT_TRUE(b->Restore(drained).ok());
  Lease l = MustLease(*b, "w");
  EXPECT_GT(l.fencing_token, drained[0].last_token);
  EXPECT_EQ(l.attempt, 4);
}

TEST_F(Fixture, CapacityAndBodySize) {
  auto q = Make({.capacity = 2, .max_body_bytes = 4});
  auto big = Item("big");
  big.body = "12345";
  auto s = q->Enqueue(big);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core::ErrorCode(s.status()), kErrBodyTooLarge);
  auto small = [](std::string id) {
    auto p = Item(id);
    p.body = "x";
    return p;
  };
  ASSERT_TRUE(q->Enqueue(small("a")).ok());
  ASSERT_TRUE(q->Enqueue(small("b")).ok());
  auto full = q->Enqueue(small("c"));
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core::ErrorCode(full.status()), kErrFull);
  EXPECT_EQ(q->Stats().pending, 2u);
}

TEST_F(Fixture, WatermarksPauseAndResumeWithListeners) {
  auto q = Make({.high_watermark = 3, .low_watermark = 1});
  std::vector<bool> transitions;
  q->AddBackpressureListener([&](const BackpressureSignal& s) { transitions.push_back(s.active); });
  ASSERT_TRUE(q->Enqueue(Item("a")).ok());
  ASSERT_TRUE(q->Enqueue(Item("b")).ok());
  EXPECT_TRUE(transitions.empty());
  ASSERT_TRUE(q->Enqueue(Item("c")).ok());
  ASSERT_EQ(transitions, std::vector<bool>{true});
  auto rejected = q->Enqueue(Item("d"));
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core::ErrorCode(rejected.status()), kErrBackpressure);
  MustLease(*q, "w");  // 2 pending: still above low
  EXPECT_TRUE(q->Stats().backpressure);
  MustLease(*q, "w");  // 1 pending: resume
  EXPECT_EQ(transitions, (std::vector<bool>{true, false}));
  EXPECT_TRUE(q->Enqueue(Item("d")).ok());
  EXPECT_EQ(q->Stats().backpressure_transitions, 2u);
  EXPECT_FALSE(ValidateOptions({.high_watermark = 3, .low_watermark = 3}).ok());
}

TEST_F(Fixture, LongPollIsServedByTheNextEnqueueOrTimesOut) {
  auto q = Make();
  std::optional<absl::StatusOr<std::optional<Lease>>> got;
  q->LeaseAsync("w", seconds(5), [&](auto r) { got = std::move(r); });
  EXPECT_FALSE(got.has_value()) << "parked, no item yet";
  EXPECT_EQ(q->Stats().waiters, 1u);
  ASSERT_TRUE(q->Enqueue(Item("r")).ok());
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok());
  ASSERT_TRUE((*got)->has_value());
  EXPECT_EQ((**got)->payload.request_id, "r");
  EXPECT_EQ(q->Stats().waiters, 0u);

  got.reset();
  q->LeaseAsync("w", seconds(5), [&](auto r) { got = std::move(r); });
  clock->Advance(seconds(4));
  EXPECT_FALSE(got.has_value());
  clock->Advance(seconds(1));
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok());
  EXPECT_FALSE((*got)->has_value()) << "timed out empty";
  EXPECT_EQ(clock->pending_timers(), 1u) << "only the lease expiry timer remains";
}

TEST_F(Fixture, CancelWaitersAnswersParkedPollsEmpty) {
  auto q = Make();
  int answered = 0;
  q->LeaseAsync("w", seconds(60), [&](auto r) {
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(r->has_value());
    ++answered;
  });
  q->CancelWaiters();
  EXPECT_EQ(answered, 1);
  EXPECT_EQ(q->Stats().waiters, 0u);
  clock->Advance(seconds(61));
  EXPECT_EQ(answered, 1) << "the cancelled timer never answers twice";
}

TEST_F(Fixture, ObserverSeesEveryMutationInSequence) {
  auto q = Make({.lease_duration = seconds(1), .max_attempts = 2});
  std::vector<std::pair<Op, std::uint64_t>> events;
  std::uint64_t last_sequence = 0;
  bool gapless = true;
  q->SetObserver([&](const MutationEvent& e) {
    gapless = gapless && e.sequence == last_sequence + 1;
    last_sequence = e.sequence;
    events.emplace_back(e.op, e.fencing_token);
  });
  ASSERT_TRUE(q->Enqueue(Item("r")).ok());
  Lease l1 = MustLease(*q, "w");
  ASSERT_TRUE(q->Heartbeat(l1.item_id, l1.fencing_token, "w").ok());
  clock->Advance(seconds(1));  // expire
  Lease l2 = MustLease(*q, "w");
  ASSERT_TRUE(q->Fail(l2.item_id, l2.fencing_token, "w", "x").ok());  // -> dead-letter
  EXPECT_EQ(q->RequeueDeadLetters(), 1u);
  q->Drain();
  std::vector<Op> ops;
  for (auto& [op, token] : events) ops.push_back(op);
  EXPECT_EQ(ops, (std::vector<Op>{Op::kEnqueue, Op::kLease, Op::kHeartbeat, Op::kExpire, Op::kLease,
                                  Op::kFail, Op::kDeadLetter, Op::kRequeue, Op::kDrain}));
  EXPECT_TRUE(gapless);
  EXPECT_EQ(events[1].second, l1.fencing_token);
  EXPECT_EQ(events[4].second, l2.fencing_token);
  EXPECT_EQ(q->Stats().sequence, last_sequence);
}

TEST_F(Fixture, MetricsCarryTheNamespace) {
  auto metrics = std::make_shared<core::MetricsRegistry>();
  auto q = Make({.name = "billing", .high_watermark = 2, .low_watermark = 0}, metrics);
  ASSERT_TRUE(q->Enqueue(Item("a")).ok());
  ASSERT_TRUE(q->Enqueue(Item("b")).ok());
  Lease l = MustLease(*q, "w");
  ASSERT_TRUE(q->Complete(l.item_id, l.fencing_token, "w").ok());
  const core::Tags ns = {{std::string(kNamespaceTag), "billing"}};
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.pending", ns), 1);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.active", ns), 0);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.completions", ns), 1);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.leases", ns), 1);
  EXPECT_EQ(metrics->Total("omnirelay.resourcelease.backpressure.transitions", ns), 1);
  const std::string text = metrics->RenderPrometheus();
  EXPECT_NE(text.find("omnirelay_resourcelease_queue_wait_seconds_bucket"), std::string::npos);
  EXPECT_NE(text.find("resourcelease_namespace=\"billing\""), std::string::npos);
}

}  // namespace
}  // namespace omnirelay::resourcelease
