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
  const auto n = static_cast<std::uint32_t>(snapshot.raw.size());
  if (n == 0) return -1;
  if (n == 1) return Pickable(*snapshot.raw[0]) ? 0 : -1;
  const std::uint32_t a = random_.Below(n);
  std::uint32_t b = random_.Below(n - 1);
  if (b >= a) ++b;
  Peer& pa = *snapshot.raw[a];
  Peer& pb = *snapshot.raw[b];
  const bool ok_a = Pickable(pa), ok_b = Pickable(pb);
  if (ok_a && ok_b) return Cost(pb) < Cost(pa) ? static_cast<int>(b) : static_cast<int>(a);
  if (ok_a) return static_cast<int>(a);
  if (ok_b) return static_cast<int>(b);
  for (std::uint32_t i = 1; i < n; ++i) {
    auto index = (a + i) % n;
    if (Pickable(*snapshot.raw[index])) return static_cast<int>(index);
  }
  return -1;
}

void LeastLatencyChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta,
                                     int first, std::vector<int>* order) {
  PeerChooser::ProbeOrder(snapshot, meta, first, order);
  std::vector<double> cost(snapshot.raw.size());
  for (std::size_t i = 0; i < cost.size(); ++i) cost[i] = Cost(*snapshot.raw[i]);
  std::stable_sort(order->begin(), order->end(), [&](int x, int y) { return cost[x] < cost[y]; });
}

}  // namespace omnirelay::peers
