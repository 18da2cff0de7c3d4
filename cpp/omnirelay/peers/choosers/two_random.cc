#include <algorithm>

#include "omnirelay/peers/choosers/choosers.h"

namespace omnirelay::peers {

TwoRandomChooser::TwoRandomChooser(const ChooserOptions& options) : random_(options.seed) {}

int TwoRandomChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  (void)meta;
  const auto n = static_cast<std::uint32_t>(snapshot.raw.size());
  if (n == 0) return -1;
  if (n == 1) return Pickable(*snapshot.raw[0]) ? 0 : -1;
  const std::uint32_t a = random_.Below(n);
  std::uint32_t b = random_.Below(n - 1);
  if (b >= a) ++b;  // distinct, still uniform
  Peer& pa = *snapshot.raw[a];
  Peer& pb = *snapshot.raw[b];
  const bool ok_a = Pickable(pa), ok_b = Pickable(pb);
  if (ok_a && ok_b)
    return pb.inflight() < pa.inflight() ? static_cast<int>(b) : static_cast<int>(a);
  if (ok_a) return static_cast<int>(a);
  if (ok_b) return static_cast<int>(b);
  // Both draws unusable: scan from a random point so the result stays unbiased.
  for (std::uint32_t i = 1; i < n; ++i) {
    auto index = (a + i) % n;
    if (Pickable(*snapshot.raw[index])) return static_cast<int>(index);
  }
  return -1;
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
