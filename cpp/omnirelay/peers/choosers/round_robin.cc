#include "omnirelay/peers/choosers/choosers.h"

namespace omnirelay::peers {

RoundRobinChooser::RoundRobinChooser(const ChooserOptions& options) { (void)options; }

int RoundRobinChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  (void)meta;
  const auto n = static_cast<std::uint64_t>(snapshot.raw.size());
  if (n == 0) return -1;
  const std::uint64_t start = cursor_.fetch_add(1, std::memory_order_relaxed);
  for (std::uint64_t i = 0; i < n; ++i) {
    auto index = static_cast<int>((start + i) % n);
    if (Pickable(*snapshot.raw[index])) return index;
  }
  return -1;
}

}  // namespace omnirelay::peers
