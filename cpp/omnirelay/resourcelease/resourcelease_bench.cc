// Enqueue + lease + complete cycles per second, in memory.
//   BM_Cycle/threads:1  one thread doing whole cycles (target >= 1M/s)
//   BM_Cycle/threads:2  two threads sharing one queue (must scale, not collapse)
// The queue has no metrics registry and no observer (pure queue cost);
// BM_CycleWithMetrics adds the node's metrics and a counting observer.
#include <benchmark/benchmark.h>

#include <string>

#include "omnirelay/resourcelease/queue.h"

namespace omnirelay::resourcelease {
namespace {

std::shared_ptr<Queue> MakeQueue(bool metrics) {
  static auto clock = std::make_shared<core::SystemClock>();
  auto q = *Queue::Create({.name = "bench", .capacity = 0}, clock,
                          metrics ? std::make_shared<core::MetricsRegistry>() : nullptr);
  if (metrics) {
    static std::atomic<std::uint64_t> events{0};
    q->SetObserver([](const MutationEvent&) { events.fetch_add(1, std::memory_order_relaxed); });
  }
  return q;
}

void Cycle(benchmark::State& state, Queue& q) {
  // Appended, not "w" + ...: GCC 12 raises a false -Wrestrict on the latter.
  std::string owner("w");
  owner.append(std::to_string(state.thread_index()));
  std::string rid("t");
  rid.append(std::to_string(state.thread_index())).append("-");
  // Fresh RequestIds across repeated runs (the queue remembers completed ones).
  static std::atomic<std::uint64_t> run{0};
  rid.append(std::to_string(run.fetch_add(1))).append("-");
  const size_t prefix_len = rid.size();
  std::uint64_t i = 0;
  for (auto _ : state) {
    rid.resize(prefix_len);
    rid += std::to_string(i++);
    ItemPayload payload{
        .resource_type = "table", .resource_id = "orders", .body = "x", .request_id = rid};
    auto e = q.Enqueue(std::move(payload));
    auto lease = q.TryLease(owner);
    if (!e.ok() || !lease.ok() || !lease->has_value()) {
      state.SkipWithError("queue refused");
      break;
    }
    auto s = q.Complete((*lease)->item_id, (*lease)->fencing_token, owner);
    benchmark::DoNotOptimize(s);
  }
  state.SetItemsProcessed(state.iterations());
}

// One queue per benchmark, created before any thread runs (function-local
// statics are initialised once, thread-safely).
void BM_Cycle(benchmark::State& state) {
  static std::shared_ptr<Queue> queue = MakeQueue(false);
  Cycle(state, *queue);
}
BENCHMARK(BM_Cycle)->Threads(1)->Threads(2)->UseRealTime();

void BM_CycleWithMetrics(benchmark::State& state) {
  static std::shared_ptr<Queue> queue = MakeQueue(true);
  Cycle(state, *queue);
}
BENCHMARK(BM_CycleWithMetrics)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace omnirelay::resourcelease
