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
  // It stays within [0, n) (wrapping by compare), so the steady state has no
  // division; only after the list shrank does one modulo bring it back.
  std::uint64_t index = cursor_.load(std::memory_order_relaxed);
  if (index >= n) [[unlikely]]
    index %= n;
  cursor_.store(index + 1 == n ? 0 : index + 1, std::memory_order_relaxed);
  for (std::uint64_t i = 0; i < n; ++i) {
    if (Pickable(*snapshot.raw[index])) return static_cast<int>(index);
    if (++index == n) index = 0;
  }
  return -1;
}

}  // namespace omnirelay::peers
