// What an outbound pays per call for a lease from its PeerPool, picked by
// round-robin vs by the leader chooser (a leader outbound, docs/leadership.md
// "Leader-aware routing"), on a pool fed by SetPeers the way membership
// feeds it: Acquire + Release, with the attachment copy an outbound takes.
//   BM_PoolLease/round-robin/<peers>, BM_PoolLease/leader/<peers>
#include <benchmark/benchmark.h>

#include <map>
#include <mutex>

#include "omnirelay/leadership/leader_directory.h"
#include "omnirelay/transport/peer_pool.h"

namespace omnirelay::transport {
namespace {

std::shared_ptr<PeerPool> MakePool(bool leader, int peers) {
  static auto directory = std::make_shared<leadership::LeaderDirectory>();
  PeerPoolOptions options;
  options.breaker_consecutive_failures = 0;
  options.service = "bench";
  options.transport = "grpc";
  if (leader) {
    options.chooser_factory = [] {
      return std::unique_ptr<peers::PeerChooser>(
          std::make_unique<leadership::LeaderChooser>(directory, "global"));
    };
    options.exhaustion_is_unavailable = true;
  } else {
    options.chooser = "round-robin";
  }
  auto pool = *MakeCoordinatorPeerPool({}, options, core::SystemClock::Shared(),
                                       std::make_shared<core::MetricsRegistry>());
  pool->SetAttachmentFactory(
      [](const std::string& address) { return std::make_shared<std::string>(address); });
  std::vector<PeerEndpoint> list;
  for (int i = 0; i < peers; ++i) {
    list.push_back({"node-" + std::to_string(i), "127.0.0.1:" + std::to_string(10000 + i)});
  }
  (void)pool->SetPeers(list);
  directory->Set("global", leadership::LeaderInfo{"node-" + std::to_string(peers / 2), 42});
  return pool;
}

std::shared_ptr<PeerPool> GetPool(bool leader, int peers) {
  static std::mutex mu;
  static std::map<std::pair<bool, int>, std::shared_ptr<PeerPool>> cache;
  std::lock_guard lock(mu);
  auto& slot = cache[{leader, peers}];
  if (!slot) slot = MakePool(leader, peers);
  return slot;
}

void Lease(benchmark::State& state, bool leader) {
  auto pool = GetPool(leader, static_cast<int>(state.range(0)));
  core::RequestMeta meta;
  for (auto _ : state) {
    auto lease = pool->Acquire(meta, std::nullopt);
    if (!lease.ok()) {
      state.SkipWithError("acquire failed");
      break;
    }
    benchmark::DoNotOptimize(lease->peer->attachment.get());
    pool->Release(*lease, absl::StatusCode::kOk);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_PoolLeaseRoundRobin(benchmark::State& state) { Lease(state, false); }
void BM_PoolLeaseLeader(benchmark::State& state) { Lease(state, true); }

BENCHMARK(BM_PoolLeaseRoundRobin)->Arg(3)->Arg(100)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_PoolLeaseLeader)->Arg(3)->Arg(100)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace omnirelay::transport
