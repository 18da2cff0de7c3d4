#include <algorithm>

#include "omnirelay/peers/choosers/choosers.h"

namespace omnirelay::peers {

LeastLatencyChooser::LeastLatencyChooser(const ChooserOptions& options) : random_(options.seed) {}

double LeastLatencyChooser::Cost(const Peer& peer) {
  // Finagle's "peak EWMA" cost: latency scaled by the queue the request joins.
  auto ewma = peer.LatencyEwmaMs();
  return ewma.value_or(0.0) * static_cast<double>(peer.inflight() + 1);
}

int LeastLatencyChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  (void)meta;
  return PickPowerOfTwo(snapshot, random_, &LeastLatencyChooser::Cost);
}

void LeastLatencyChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta,
                                     int first, std::vector<int>* order) {
  PeerChooser::ProbeOrder(snapshot, meta, first, order);
  std::vector<double> cost(snapshot.raw.size());
  for (std::size_t i = 0; i < cost.size(); ++i) cost[i] = Cost(*snapshot.raw[i]);
  std::stable_sort(order->begin(), order->end(), [&](int x, int y) { return cost[x] < cost[y]; });
}

}  // namespace omnirelay::peers
