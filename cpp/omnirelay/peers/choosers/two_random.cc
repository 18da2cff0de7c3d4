#include <algorithm>

#include "omnirelay/peers/choosers/choosers.h"

namespace omnirelay::peers {

TwoRandomChooser::TwoRandomChooser(const ChooserOptions& options) : random_(options.seed) {}

int TwoRandomChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  (void)meta;
  return PickPowerOfTwo(snapshot, random_, [](const Peer& peer) { return peer.inflight(); });
}

void TwoRandomChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta,
                                  int first, std::vector<int>* order) {
  (void)first;
  const auto n = static_cast<std::uint32_t>(snapshot.raw.size());
  int start = n == 0 ? 0 : static_cast<int>(random_.Below(n));
  PeerChooser::ProbeOrder(snapshot, meta, start, order);
  // Least loaded first, random rotation as the tie-break.
  std::stable_sort(order->begin(), order->end(), [&](int x, int y) {
    return snapshot.raw[x]->inflight() < snapshot.raw[y]->inflight();
  });
}

}  // namespace omnirelay::peers
