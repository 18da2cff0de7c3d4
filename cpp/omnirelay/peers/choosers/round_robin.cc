#include "omnirelay/peers/choosers/choosers.h"

namespace omnirelay::peers {

RoundRobinChooser::RoundRobinChooser(const ChooserOptions& options) { (void)options; }

int RoundRobinChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  (void)meta;
  const auto n = static_cast<std::uint64_t>(snapshot.raw.size());
  if (n == 0) return -1;
  // The cursor advances with a relaxed load + store rather than a locked
  // fetch_add (which would be the largest single cost of a pick): threads
  // racing may both take the same peer once; the rotation stays even.
  // One division per pick, then walk with a wrap instead of a modulo per step.
  const std::uint64_t position = cursor_.load(std::memory_order_relaxed);
  cursor_.store(position + 1, std::memory_order_relaxed);
  std::uint64_t index = position % n;
  for (std::uint64_t i = 0; i < n; ++i) {
    if (Pickable(*snapshot.raw[index])) return static_cast<int>(index);
    if (++index == n) index = 0;
  }
  return -1;
}

}  // namespace omnirelay::peers
