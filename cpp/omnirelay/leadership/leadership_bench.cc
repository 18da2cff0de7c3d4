// The leader chooser's pick next to round-robin's, on the same peer snapshot:
// what routing to "the current leader of scope X" costs on the hot path.
//   BM_Pick/round-robin/<peers>, BM_Pick/leader/<peers>
#include <benchmark/benchmark.h>

#include "omnirelay/leadership/leader_directory.h"
#include "omnirelay/peers/coordinator.h"

namespace omnirelay::leadership {
namespace {

struct Setup {
  std::unique_ptr<peers::PeerListCoordinator> coordinator;
  std::shared_ptr<LeaderDirectory> directory = std::make_shared<LeaderDirectory>();
  std::unique_ptr<LeaderChooser> leader;
};

Setup& GetSetup(int peers) {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<Setup>> cache;
  std::lock_guard lock(mu);
  auto& slot = cache[peers];
  if (!slot) {
    slot = std::make_unique<Setup>();
    peers::PeerListCoordinatorOptions options;
    options.chooser = "round-robin";
    options.service = "bench";
    options.transport = "grpc";
    options.chooser_options.seed = 1;
    slot->coordinator = *peers::PeerListCoordinator::Create(
        options, core::SystemClock::Shared(), std::make_shared<core::MetricsRegistry>());
    for (int i = 0; i < peers; ++i) {
      peers::PeerDescriptor d;
      d.id = "node-" + std::to_string(i);
      (void)slot->coordinator->AddPeer(d);
    }
    slot->directory->Set("global", LeaderInfo{"node-" + std::to_string(peers / 2), 42});
    slot->leader = std::make_unique<LeaderChooser>(slot->directory, "global");
  }
  return *slot;
}

void BM_PickRoundRobin(benchmark::State& state) {
  Setup& setup = GetSetup(static_cast<int>(state.range(0)));
  auto snapshot = setup.coordinator->snapshot();
  peers::PeerChooser& chooser = setup.coordinator->chooser();
  core::RequestMeta meta;
  for (auto _ : state) benchmark::DoNotOptimize(chooser.Pick(*snapshot, meta));
  state.SetItemsProcessed(state.iterations());
}

void BM_PickLeader(benchmark::State& state) {
  Setup& setup = GetSetup(static_cast<int>(state.range(0)));
  auto snapshot = setup.coordinator->snapshot();
  core::RequestMeta meta;
  for (auto _ : state) benchmark::DoNotOptimize(setup.leader->Pick(*snapshot, meta));
  state.SetItemsProcessed(state.iterations());
}

BENCHMARK(BM_PickRoundRobin)->Arg(3)->Arg(100)->Arg(1000)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_PickLeader)->Arg(3)->Arg(100)->Arg(1000)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace omnirelay::leadership
