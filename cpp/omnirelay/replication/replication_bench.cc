// Replication figures (docs/replication.md quotes them):
//   * SQLite replicator throughput with group commit (synchronous NORMAL and
//     FULL), events/s;
//   * the durable-acknowledgement mode: producers that each wait for their
//     event to be durable before the next one (like RPC clients), events/s and
//     acknowledgement latency p50/p99;
//   * recovery: replay of a 1,000,000-event log through the checkpointing sink
//     and the SQLite deterministic store, half of whose effects were recorded
//     before the "crash" (time, effects skipped/recorded);
//   * hub catch-up: a node buffers REPLICATION_BENCH_CATCHUP events (default
//     1000000) while its hub is down; time from the hub's return until all
//     of them are durable in the hub's SQLite log.
// Sizes: REPLICATION_BENCH_EVENTS (default 200000) for the throughput runs,
// REPLICATION_BENCH_REPLAY (default 1000000) for the replay.
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <mutex>
#include <thread>

#include "omnirelay/replication/deterministic.h"
#include "omnirelay/replication/durable_replicators.h"
#include "omnirelay/replication/hub.h"
#include "omnirelay/replication/recovery.h"
#include "omnirelay/replication/test_util.h"

namespace omnirelay::replication {
namespace {

std::uint64_t EnvSize(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : fallback;
}

ReplicationEvent BenchEvent(std::uint64_t seq) {
  // A realistic enqueue: ~200 bytes of JSON.
  ReplicationEvent e = testing::MakeEvent("default", seq);
  e.payload->body = "payload-" + std::to_string(seq);
  return e;
}

void BM_SqliteGroupCommit(benchmark::State& state) {
  const bool full_sync = state.range(0) != 0;
  const std::uint64_t n = EnvSize("REPLICATION_BENCH_EVENTS", 200000);
  for (auto _ : state) {
    state.PauseTiming();
    testing::TempDir dir;
    auto r = SqliteReplicator::Open({.path = dir / "log.db", .full_sync = full_sync});
    if (!r.ok()) return state.SkipWithError(r.status().ToString().c_str());
    std::vector<ReplicationEvent> events;
    events.reserve(n);
    for (std::uint64_t s = 1; s <= n; ++s) events.push_back(BenchEvent(s));
    state.ResumeTiming();
    for (auto& e : events) {
      if (!(*r)->Publish(std::move(e)).ok()) return state.SkipWithError("publish failed");
    }
    if (!(*r)->Flush().ok()) return state.SkipWithError("flush failed");
    state.PauseTiming();
    const auto status = (*r)->Status();
    state.counters["batches"] = static_cast<double>(status.batches);
    // Events per second of the writer thread's CPU: the capacity of the log
    // on a core of its own (the wall-clock rate depends on the machine's load).
    state.counters["events/cpu_s"] =
        static_cast<double>(status.events_written) /
        (static_cast<double>(std::max<std::uint64_t>(status.writer_cpu_us, 1)) / 1e6);
    state.ResumeTiming();
  }
  state.counters["events/s"] =
      benchmark::Counter(static_cast<double>(n) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_SqliteGroupCommit)
    ->ArgName("full_sync")
    ->Arg(0)
    ->Arg(1)
    ->Iterations(1)
    ->Repetitions(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// `producers` threads; each publishes one event (under one lock, as the queue
// does) and waits for its durable acknowledgement before the next.
void BM_SqliteDurableAck(benchmark::State& state) {
  const int producers = static_cast<int>(state.range(0));
  const std::uint64_t per =
      EnvSize("REPLICATION_BENCH_EVENTS", 200000) / 40 / static_cast<std::uint64_t>(producers);
  std::vector<double> latencies_us;
  for (auto _ : state) {
    state.PauseTiming();
    testing::TempDir dir;
    auto r = SqliteReplicator::Open({.path = dir / "log.db", .full_sync = true});
    if (!r.ok()) return state.SkipWithError(r.status().ToString().c_str());
    std::mutex queue_lock;
    std::uint64_t next = 0;
    std::mutex lat_mu;
    state.ResumeTiming();
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&] {
        std::vector<double> mine;
        for (std::uint64_t i = 0; i < per; ++i) {
          const auto start = std::chrono::steady_clock::now();
          std::uint64_t seq;
          {
            std::lock_guard lock(queue_lock);
            seq = ++next;
            if (!(*r)->Publish(BenchEvent(seq)).ok()) return;
          }
          std::promise<void> done;
          (*r)->WhenDurable("default", seq, [&](absl::Status) { done.set_value(); });
          done.get_future().wait();
          mine.push_back(
              std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                  .count());
        }
        std::lock_guard lock(lat_mu);
        latencies_us.insert(latencies_us.end(), mine.begin(), mine.end());
      });
    }
    for (auto& t : threads) t.join();
  }
  std::sort(latencies_us.begin(), latencies_us.end());
  auto pct = [&](double p) {
    return latencies_us.empty()
               ? 0.0
               : latencies_us[std::min(
                     latencies_us.size() - 1,
                     static_cast<size_t>(p * static_cast<double>(latencies_us.size())))];
  };
  state.counters["events/s"] =
      benchmark::Counter(static_cast<double>(latencies_us.size()), benchmark::Counter::kIsRate);
  state.counters["ack_p50_us"] = pct(0.50);
  state.counters["ack_p99_us"] = pct(0.99);
}
BENCHMARK(BM_SqliteDurableAck)
    ->ArgName("producers")
    ->Arg(1)
    ->Arg(16)
    ->Arg(64)
    ->Iterations(1)
    ->Repetitions(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_ReplayThroughDeterministicStore(benchmark::State& state) {
  const std::uint64_t n = EnvSize("REPLICATION_BENCH_REPLAY", 1000000);
  testing::TempDir dir;
  auto clock = std::make_shared<core::SystemClock>();
  {
    // The log, and the effects of its first half recorded live before the crash.
    auto log = SqliteReplicator::Open({.path = dir / "log.db", .full_sync = false});
    auto store = SqliteDeterministicStore::Open({.path = dir / "effects.db"});
    if (!log.ok() || !store.ok()) return state.SkipWithError("open failed");
    auto live = std::make_shared<DeterministicCoordinator>(*store, DeterministicOptions{}, clock);
    std::vector<ReplicationEvent> half;
    for (std::uint64_t s = 1; s <= n; ++s) {
      ReplicationEvent e = BenchEvent(s);
      if (s <= n / 2) half.push_back(e);
      if (half.size() == 4096 || (s == n / 2 && !half.empty())) {
        (void)live->ApplyBatch(half);
        half.clear();
      }
      (void)(*log)->Publish(std::move(e));
    }
    if (!(*log)->Flush().ok()) return state.SkipWithError("flush failed");
  }
  ReplayReport report;
  for (auto _ : state) {
    state.PauseTiming();
    auto log = SqliteReplicator::Open({.path = dir / "log.db", .full_sync = false});
    auto store = SqliteDeterministicStore::Open({.path = dir / "effects.db"});
    auto coordinator =
        std::make_shared<DeterministicCoordinator>(*store, DeterministicOptions{}, clock);
    auto checkpoint = std::make_shared<CheckpointingSink>("bench", coordinator, clock);
    RecoveryFold fold;
    state.ResumeTiming();
    auto r = ReplayLog(**log, "default", {checkpoint}, fold, coordinator.get(), 4096);
    if (!r.ok()) return state.SkipWithError(r.status().ToString().c_str());
    report = *r;
  }
  state.counters["events"] = static_cast<double>(report.events);
  state.counters["effects_skipped"] = static_cast<double>(report.effects_skipped);
  state.counters["effects_recorded"] = static_cast<double>(report.effects_recorded);
  state.counters["events/s"] =
      benchmark::Counter(static_cast<double>(report.events), benchmark::Counter::kIsRate);
}
// One run: a second replay would find every effect recorded.
BENCHMARK(BM_ReplayThroughDeterministicStore)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_HubCatchUpAfterPartition(benchmark::State& state) {
  const std::uint64_t n = EnvSize("REPLICATION_BENCH_CATCHUP", 1000000);
  for (auto _ : state) {
    state.PauseTiming();
    testing::TempDir dir;
    // A port for the hub: bind once to learn a free one, then give it back.
    int port = 0;
    {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof addr;
      if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
          ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
        port = ntohs(addr.sin_port);
      }
      ::close(fd);
    }
    if (port == 0) return state.SkipWithError("no free port");
    auto client = GrpcHubReplicator::Open(
        {.address = "127.0.0.1:" + std::to_string(port),
         .call_timeout = std::chrono::seconds(30),
         .batch = {.max_batch = 4096, .retry_interval = std::chrono::milliseconds(50)}});
    if (!client.ok()) return state.SkipWithError("client");
    for (std::uint64_t s = 1; s <= n; ++s) (void)(*client)->Publish(BenchEvent(s));
    auto log = SqliteReplicator::Open({.path = dir / "hub.db", .full_sync = false});
    auto service = std::make_unique<HubService>(*log);
    state.ResumeTiming();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureServerCredentials());
    builder.SetMaxReceiveMessageSize(64 << 20);
    builder.RegisterService(service.get());
    auto server = builder.BuildAndStart();
    while ((*client)->Status().queues["default"].durable < n) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    state.PauseTiming();
    state.counters["hub_log_events"] = static_cast<double>(*(*log)->LastSequence("default"));
    server->Shutdown();
    (*client)->Close();
    state.ResumeTiming();
  }
  state.counters["events/s"] =
      benchmark::Counter(static_cast<double>(n) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_HubCatchUpAfterPartition)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace omnirelay::replication
