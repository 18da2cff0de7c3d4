// Acquire+release per chooser at 3, 8, 100 and 1000 peers, 1 and 2 threads.
//
//   BM_Coordinator/<chooser>/<peers>  the full path a transport takes:
//       PeerListCoordinator::Acquire + PeerLease::Release, with metrics
//       (lease.duration histogram; in-flight and successes are observable
//       series read at scrape time), latency EWMA/window, last-success time,
//       breaker bookkeeping.
//   BM_Chooser/<chooser>/<peers>      the chooser on the same snapshot without
//       the coordinator and lease: Pick + Peer::TryAcquire + Peer::Release
//       with no latency (no EWMA/window work), to show what the
//       selection itself costs.
//   BM_Pick/<chooser>/<peers>         Pick alone.
// Targets (issue 3): round-robin, two-random <= 50 ns; fewest-pending <= 200 ns
// at 1000 peers; hash <= 100 ns.
//
// Every benchmark reports `allocs/op`: this binary replaces operator new with
// one that counts calls per thread, so the column shows the hot path's
// allocations per acquire+release (0 in steady state; the first iterations'
// statistics cells and histogram rows are amortised to ~0).
#include <benchmark/benchmark.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "omnirelay/peers/coordinator.h"
#include "omnirelay/peers/geo_chooser.h"
#include "omnirelay/peers/test_util.h"

OMNIRELAY_COUNT_ALLOCATIONS();

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;

// Allocations made by this thread during the timed loop, per iteration.
class AllocationCounter {
 public:
  explicit AllocationCounter(benchmark::State& state)
      : state_(state), start_(testing::thread_allocations) {}
  ~AllocationCounter() {
    state_.counters["allocs/op"] =
        benchmark::Counter(static_cast<double>(testing::thread_allocations - start_) /
                               static_cast<double>(state_.iterations()),
                           benchmark::Counter::kAvgThreads);
  }

 private:
  benchmark::State& state_;
  std::uint64_t start_;
};

const char* const kChoosers[] = {"round-robin", "two-random", "fewest-pending", "preferred",
                                 "least-latency", "hash",
                                 // The geo chooser (local region = half the
                                 // peers) over fewest-pending / round-robin.
                                 "geo", "geo/round-robin"};

struct Setup {
  std::unique_ptr<PeerListCoordinator> coordinator;
  std::vector<core::RequestMeta> metas;  // hash keys; empty meta otherwise
};

// Built once per (chooser, peers) and shared by the benchmark's threads.
Setup& GetSetup(const std::string& chooser, int peers) {
  static std::mutex mu;
  static std::map<std::pair<std::string, int>, std::unique_ptr<Setup>> cache;
  std::lock_guard lock(mu);
  auto& slot = cache[{chooser, peers}];
  if (!slot) {
    slot = std::make_unique<Setup>();
    PeerListCoordinatorOptions options;
    options.chooser = chooser;
    options.service = "bench";
    options.transport = "grpc";
    options.chooser_options.seed = 1;
    options.chooser_options.preferred_zone = "z0";
    auto metrics = std::make_shared<core::MetricsRegistry>();
    if (chooser.starts_with("geo")) {
      options.chooser_factory = [chooser, metrics]() -> std::unique_ptr<PeerChooser> {
        GeoChooserOptions geo;
        geo.region = "west";
        geo.inner = chooser == "geo" ? "fewest-pending" : "round-robin";
        geo.inner_options.seed = 1;
        return *GeoChooser::Create(geo, core::SystemClock::Shared(), metrics);
      };
    }
    slot->coordinator = *PeerListCoordinator::Create(options, core::SystemClock::Shared(), metrics);
    for (int i = 0; i < peers; ++i) {
      PeerDescriptor d;
      d.id = "peer-" + std::to_string(i);
      d.zone = i % 2 ? "z1" : "z0";
      d.region = i % 2 ? "east" : "west";
      (void)slot->coordinator->AddPeer(d);
    }
    for (int k = 0; k < 1024; ++k) {
      core::RequestMeta meta;
      if (chooser == "hash") meta.shard_key = "shard-" + std::to_string(k);
      slot->metas.push_back(std::move(meta));
    }
  }
  return *slot;
}

void BM_Coordinator(benchmark::State& state, const char* chooser) {
  Setup& setup = GetSetup(chooser, static_cast<int>(state.range(0)));
  std::size_t k = static_cast<std::size_t>(state.thread_index()) * 97;
  AllocationCounter allocations(state);
  for (auto _ : state) {
    auto lease = setup.coordinator->Acquire(setup.metas[k++ & 1023]);
    lease->Release(core::StatusCode::kOk, 1ms);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Chooser(benchmark::State& state, const char* chooser) {
  // Same snapshot and chooser, but bypasses the coordinator and the lease:
  // Pick + TryAcquire + Release with zero latency (no EWMA/histogram work).
  Setup& setup = GetSetup(chooser, static_cast<int>(state.range(0)));
  auto snapshot = setup.coordinator->snapshot();
  PeerChooser& c = setup.coordinator->chooser();
  std::size_t k = static_cast<std::size_t>(state.thread_index()) * 97;
  AllocationCounter allocations(state);
  for (auto _ : state) {
    int index = c.Pick(*snapshot, setup.metas[k++ & 1023]);
    Peer* peer = snapshot->raw[index];
    auto admission = peer->TryAcquire();
    benchmark::DoNotOptimize(admission);
    peer->Release(core::StatusCode::kOk, core::Duration::zero(), admission.probe);
    if (c.tracks_load()) c.OnPeerChanged(*snapshot, index);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Pick(benchmark::State& state, const char* chooser) {
  // Selection only: Pick on the shared snapshot (fewest-pending's Pick also
  // moves the picked peer up a bucket; OnPeerChanged moves it back).
  Setup& setup = GetSetup(chooser, static_cast<int>(state.range(0)));
  auto snapshot = setup.coordinator->snapshot();
  PeerChooser& c = setup.coordinator->chooser();
  std::size_t k = static_cast<std::size_t>(state.thread_index()) * 97;
  for (auto _ : state) {
    int index = c.Pick(*snapshot, setup.metas[k++ & 1023]);
    benchmark::DoNotOptimize(index);
    if (c.tracks_load()) c.OnPeerChanged(*snapshot, index);
  }
  state.SetItemsProcessed(state.iterations());
}

void Register() {
  for (const char* chooser : kChoosers) {
    for (auto* fn : {&BM_Coordinator, &BM_Chooser, &BM_Pick}) {
      const char* prefix = fn == &BM_Coordinator ? "BM_Coordinator/"
                           : fn == &BM_Chooser   ? "BM_Chooser/"
                                                 : "BM_Pick/";
      std::string name = std::string(prefix) + chooser;
      benchmark::RegisterBenchmark(name.c_str(), fn, chooser)
          ->Arg(3)
          ->Arg(8)
          ->Arg(100)
          ->Arg(1000)
          ->Threads(1)
          ->Threads(2)
          ->UseRealTime();
    }
  }
}

const bool kRegistered = (Register(), true);

}  // namespace
}  // namespace omnirelay::peers
