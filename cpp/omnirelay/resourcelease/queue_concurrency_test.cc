// Concurrent producers, workers (some of which abandon leases so they expire
// on the real clock's timer thread), long polls and a drain/restore thread.
// Run under TSan by CI (label `tsan`). Checks that every RequestId ends
// exactly once in completed or dead-letter and never completes twice.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "omnirelay/resourcelease/queue.h"

namespace omnirelay::resourcelease {
namespace {

using std::chrono::milliseconds;

TEST(ResourceLeaseConcurrency, ProducersWorkersAndDrainsLoseNothing) {
  auto clock = std::make_shared<core::SystemClock>();
  auto q = *Queue::Create(
      {.name = "conc", .capacity = 0, .lease_duration = milliseconds(30), .max_attempts = 4},
      clock);
  std::atomic<std::uint64_t> sequence_seen{0};
  std::atomic<bool> gapless{true};
  q->SetObserver([&](const MutationEvent& e) {
    // Runs under the queue lock: sequences arrive strictly in order.
    if (e.sequence != sequence_seen.load(std::memory_order_relaxed) + 1) gapless = false;
    sequence_seen.store(e.sequence, std::memory_order_relaxed);
  });
  constexpr int kProducers = 2;
  constexpr int kPerProducer = 1500;
  std::mutex mu;
  std::set<std::string> completed;
  bool completed_twice = false;
  std::atomic<bool> producing{true};
  std::atomic<int> produced{0};

  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        std::string rid("p");  // appended: GCC 12 raises a false -Wrestrict on "p" + ...
        rid.append(std::to_string(p)).append("-").append(std::to_string(i));
        while (true) {
          auto r = q->Enqueue({.resource_type = "t", .resource_id = rid, .request_id = rid});
          if (r.ok()) break;
          std::this_thread::yield();  // drained for a moment
        }
        produced.fetch_add(1);
      }
    });
  }
  auto worker = [&](int w) {
    std::mt19937 rng(w);
    std::string owner("w");
    owner.append(std::to_string(w));
    while (true) {
      auto lease = q->TryLease(owner);
      if (!lease.ok() || !lease->has_value()) {
        if (!producing.load() && q->Stats().pending == 0 && q->Stats().active == 0) return;
        std::this_thread::sleep_for(milliseconds(1));
        continue;
      }
      const Lease& l = **lease;
      const int roll = static_cast<int>(rng() % 20);
      if (roll == 0) continue;  // abandon: the lease expires and the item returns
      if (roll == 1) {
        (void)q->Heartbeat(l.item_id, l.fencing_token, owner);
        (void)q->Fail(l.item_id, l.fencing_token, owner, "transient");
        continue;
      }
      if (q->Complete(l.item_id, l.fencing_token, owner).ok()) {
        std::lock_guard lock(mu);
        if (!completed.insert(l.payload.request_id).second) completed_twice = true;
      }
    }
  };
  for (int w = 0; w < 3; ++w) threads.emplace_back(worker, w);
  // A long-polling worker: answered by enqueues or by its timer.
  threads.emplace_back([&] {
    while (producing.load()) {
      std::promise<absl::StatusOr<std::optional<Lease>>> promise;
      auto future = promise.get_future();
      q->LeaseAsync("poller", milliseconds(5), [&](auto r) { promise.set_value(std::move(r)); });
      auto r = future.get();
      if (r.ok() && r->has_value() &&
          q->Complete((*r)->item_id, (*r)->fencing_token, "poller").ok()) {
        std::lock_guard lock(mu);
        if (!completed.insert((*r)->payload.request_id).second) completed_twice = true;
      }
    }
  });
  // Drain and restore a few times while everything runs.
  threads.emplace_back([&] {
    for (int i = 0; i < 20 && producing.load(); ++i) {
      std::this_thread::sleep_for(milliseconds(5));
      auto items = q->Drain();
      std::this_thread::sleep_for(milliseconds(1));
      ASSERT_TRUE(q->Restore(std::move(items)).ok());
    }
  });
  for (int p = 0; p < kProducers; ++p) threads[p].join();
  producing = false;
  for (size_t t = kProducers; t < threads.size(); ++t) threads[t].join();

  // Forgotten leases expire on the timer thread; workers exited once idle.
  for (int i = 0; i < 2000 && (q->Stats().active > 0 || q->Stats().pending > 0); ++i) {
    auto lease = q->TryLease("closer");
    if (lease.ok() && lease->has_value()) {
      ASSERT_TRUE(q->Complete((*lease)->item_id, (*lease)->fencing_token, "closer").ok());
      completed_twice |= !completed.insert((*lease)->payload.request_id).second;
    } else {
      std::this_thread::sleep_for(milliseconds(5));
    }
  }
  auto s = q->Stats();
  ASSERT_EQ(s.pending, 0u);
  ASSERT_EQ(s.active, 0u);
  EXPECT_FALSE(completed_twice);
  std::set<std::string> ended = completed;
  for (const auto& d : q->DeadLetters()) {
    EXPECT_TRUE(ended.insert(d.payload.request_id).second) << "completed and dead";
  }
  EXPECT_EQ(ended.size(), static_cast<size_t>(kProducers * kPerProducer));
  EXPECT_TRUE(gapless.load());
  EXPECT_GT(s.expired, 0u);
}

}  // namespace
}  // namespace omnirelay::resourcelease
