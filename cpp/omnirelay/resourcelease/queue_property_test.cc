// Seeded property test: random interleavings of enqueue / lease / heartbeat /
// expire / complete / fail / drain / restore / dead-letter requeue against a
// model. Properties:
//   1. every enqueued RequestId ends exactly once in completed or dead-letter;
//   2. no RequestId is completed twice;
//   3. a complete/heartbeat/fail succeeds only with the newest token handed
//      out for that item and only before that lease's expiry (so two owners
//      are never live at once), and a stale one is always rejected;
//   4. the mutation observer's sequence has no gaps.
// OMNIRELAY_PROPERTY_OPS (default 100000) and OMNIRELAY_PROPERTY_SEED scale it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <set>

#include "omnirelay/resourcelease/queue.h"

namespace omnirelay::resourcelease {
namespace {

using std::chrono::milliseconds;

long EnvOr(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtol(v, nullptr, 10) : fallback;
}

// (Built with append: GCC 12 raises a false -Wrestrict on "r" + to_string.)
std::string Rid(int n) {
  std::string out("r");
  out.append(std::to_string(n));
  return out;
}

struct Held {
  std::string request_id;
  std::uint64_t item_id;
  std::uint64_t token;
  std::string owner;
};

struct Model {
  std::map<std::string, std::uint64_t> newest_token;  // per RequestId
  std::map<std::string, core::TimePoint> expires;     // of the newest lease
  std::set<std::string> enqueued;
  std::set<std::string> completed;
  std::set<std::string> backed_up;  // in a drained batch not restored yet
};

void RunProperty(std::uint64_t seed, long ops) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  auto clock = std::make_shared<core::ManualClock>();
  const auto lease_duration = milliseconds(100);
  auto q = *Queue::Create({.name = "prop",
                           .capacity = 0,
                           .lease_duration = lease_duration,
                           .max_attempts = 3,
                           .high_watermark = 0,
                           .completed_retention = SIZE_MAX},
                          clock);
  std::uint64_t last_sequence = 0;
  bool gapless = true;
  q->SetObserver([&](const MutationEvent& e) {
    gapless = gapless && e.sequence == last_sequence + 1;
    last_sequence = e.sequence;
  });
  std::mt19937_64 rng(seed);
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  Model model;
  std::vector<Held> held;  // leases workers think they hold (some stale)
  std::vector<std::vector<ItemRecord>> drained_batches;
  const char* owners[] = {"w0", "w1", "w2", "w3"};
  int next_id = 0;

  auto check_success = [&](const Held& h) {
    ASSERT_EQ(model.newest_token[h.request_id], h.token)
        << "a call with an outdated token succeeded for " << h.request_id;
    ASSERT_LT(clock->Now(), model.expires[h.request_id]) << "an expired lease acted";
  };
  auto do_lease = [&](const std::string& owner) {
    auto lease = q->TryLease(owner);
    if (!lease.ok()) {
      ASSERT_EQ(lease.status().code(), absl::StatusCode::kUnavailable);
      return;
    }
    if (!lease->has_value()) return;
    const Lease& l = **lease;
    ASSERT_GT(l.fencing_token, model.newest_token[l.payload.request_id]);
    model.newest_token[l.payload.request_id] = l.fencing_token;
    model.expires[l.payload.request_id] = l.expires_at;
    held.push_back({l.payload.request_id, l.item_id, l.fencing_token, owner});
    // Workers forget some leases (crashes); keep the set of remembered ones
    // bounded so the test stays linear.
    if (held.size() > 64) held.erase(held.begin());
  };

  for (long i = 0; i < ops; ++i) {
    const size_t roll = pick(100);
    if (roll < 25) {  // enqueue (10% re-sends a known RequestId)
      // A drained item's RequestId is known to whoever holds the backup, not
      // to this queue: re-sends pick RequestIds that are not out on a backup.
      const std::string fresh = Rid(next_id);
      std::string rid = fresh;
      if (!model.enqueued.empty() && pick(10) == 0) {
        rid = *std::next(model.enqueued.begin(), static_cast<long>(pick(model.enqueued.size())));
        if (model.backed_up.contains(rid)) rid = fresh;
      }
      if (rid == fresh) ++next_id;
      auto r = q->Enqueue({.resource_type = "t",
                           .resource_id = rid,
                           .request_id = rid,
                           .priority = static_cast<int>(pick(3))});
      if (r.ok()) {
        if (!r->duplicate) {
          ASSERT_TRUE(model.enqueued.insert(rid).second);
        }
      } else {
        ASSERT_EQ(r.status().code(), absl::StatusCode::kUnavailable);  // drained
      }
    } else if (roll < 50) {
      do_lease(owners[pick(4)]);
    } else if (roll < 58 && !held.empty()) {  // heartbeat
      const Held h = held[pick(held.size())];
      auto r = q->Heartbeat(h.item_id, h.token, h.owner);
      if (r.ok()) {
        check_success(h);
        model.expires[h.request_id] = *r;
      }
    } else if (roll < 72 && !held.empty()) {  // complete
      const size_t idx = pick(held.size());
      const Held h = held[idx];
      held.erase(held.begin() + static_cast<long>(idx));
      if (q->Complete(h.item_id, h.token, h.owner).ok()) {
        check_success(h);
        ASSERT_TRUE(model.completed.insert(h.request_id).second) << "completed twice";
      }
    } else if (roll < 80 && !held.empty()) {  // fail (sometimes poison)
      const size_t idx = pick(held.size());
      const Held h = held[idx];
      held.erase(held.begin() + static_cast<long>(idx));
      if (q->Fail(h.item_id, h.token, h.owner, "err", pick(8) != 0).ok()) check_success(h);
    } else if (roll < 84 && !held.empty()) {  // a wrong owner tries
      const Held h = held[pick(held.size())];
      auto s = q->Complete(h.item_id, h.token, h.owner + "-imposter");
      ASSERT_FALSE(s.ok());
    } else if (roll < 93) {  // time passes; leases expire
      clock->Advance(milliseconds(pick(60)));
    } else if (roll < 95) {
      drained_batches.push_back(q->Drain());
      for (const auto& r : drained_batches.back()) model.backed_up.insert(r.payload.request_id);
    } else if (roll < 98) {
      if (drained_batches.empty()) {
        q->Resume();
      } else {
        const size_t idx = pick(drained_batches.size());
        ASSERT_TRUE(q->Restore(drained_batches[idx]).ok());
        for (const auto& r : drained_batches[idx]) model.backed_up.erase(r.payload.request_id);
        drained_batches.erase(drained_batches.begin() + static_cast<long>(idx));
      }
    } else if (roll < 99) {
      q->RequeueDeadLetters();
    }
    if (::testing::Test::HasFatalFailure()) return;
    if (i % 997 == 0) {  // never two live leases on one item
      std::set<std::uint64_t> ids;
      for (const auto& l : q->ActiveLeases()) ASSERT_TRUE(ids.insert(l.item_id).second);
    }
  }

  // Wind down: bring back everything drained, then work every item off.
  for (auto& batch : drained_batches) ASSERT_TRUE(q->Restore(batch).ok());
  q->Resume();
  held.clear();
  for (int round = 0; round < 100000; ++round) {
    auto s = q->Stats();
    if (s.pending == 0 && s.active == 0) break;
    if (s.pending == 0) {
      clock->Advance(lease_duration);  // let forgotten leases expire
      continue;
    }
    do_lease("closer");
    if (::testing::Test::HasFatalFailure()) return;
    const Held h = held.back();
    held.pop_back();
    ASSERT_TRUE(q->Complete(h.item_id, h.token, h.owner).ok());
    ASSERT_TRUE(model.completed.insert(h.request_id).second) << "completed twice";
  }
  auto s = q->Stats();
  ASSERT_EQ(s.pending, 0u);
  ASSERT_EQ(s.active, 0u);
  std::set<std::string> dead;
  for (const auto& r : q->DeadLetters()) {
    ASSERT_TRUE(dead.insert(r.payload.request_id).second);
    ASSERT_FALSE(model.completed.contains(r.payload.request_id)) << "completed and dead";
  }
  std::set<std::string> ended = model.completed;
  ended.insert(dead.begin(), dead.end());
  EXPECT_EQ(ended, model.enqueued) << "every RequestId ends exactly once";
  EXPECT_EQ(model.completed.size() + dead.size(), model.enqueued.size());
  EXPECT_TRUE(gapless);
  EXPECT_GT(model.enqueued.size(), static_cast<size_t>(ops / 10));
  EXPECT_GT(s.expired, 0u);
  EXPECT_GT(s.dead_lettered, 0u);
}

TEST(ResourceLeaseProperty, RandomInterleavingsKeepEveryItemExactlyOnce) {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  // Sanitizer builds run the same interleavings at a fifth of the length
  // (the release build's ctest runs the full 100k).
  const long ops = EnvOr("OMNIRELAY_PROPERTY_OPS", 20000);
#else
  const long ops = EnvOr("OMNIRELAY_PROPERTY_OPS", 100000);
#endif
  const auto seed = static_cast<std::uint64_t>(EnvOr("OMNIRELAY_PROPERTY_SEED", 13));
  RunProperty(seed, ops);
}

TEST(ResourceLeaseProperty, SeveralSeeds) {
  for (std::uint64_t seed = 1; seed <= 3; ++seed) {
    RunProperty(seed, 10000);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace omnirelay::resourcelease
