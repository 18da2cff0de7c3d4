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
  // Least loaded first, random rotation as the tie-break. The counts are read
  // once: other threads change them during the sort, and a comparator whose
  // answers change is not a strict weak order (the insertion sort inside
  // stable_sort then runs off the front of the range; TSan caught it).
  std::vector<int> load(n);
  for (std::uint32_t i = 0; i < n; ++i) load[i] = snapshot.raw[i]->inflight();
  std::stable_sort(order->begin(), order->end(), [&](int x, int y) { return load[x] < load[y]; });
}

}  // namespace omnirelay::peers
