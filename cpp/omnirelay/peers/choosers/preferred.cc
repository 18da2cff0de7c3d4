#include <algorithm>

#include "omnirelay/peers/choosers/choosers.h"

namespace omnirelay::peers {
namespace {
struct PreferredState final : ChooserState {
  std::vector<int> preferred;
  std::vector<int> others;
};
}  // namespace

PreferredChooser::PreferredChooser(const ChooserOptions& options) : options_(options) {}

bool PreferredChooser::IsPreferred(const PeerDescriptor& d) const {
  if (!options_.preferred_ids.empty() &&
      std::find(options_.preferred_ids.begin(), options_.preferred_ids.end(), d.id) ==
          options_.preferred_ids.end()) {
    return false;
  }
  if (!options_.preferred_zone.empty() && d.zone != options_.preferred_zone) return false;
  if (!options_.preferred_region.empty() && d.region != options_.preferred_region) return false;
  if (!options_.preferred_protocol.empty()) {
    bool h3 = options_.preferred_protocol == "h3" || options_.preferred_protocol == "http3";
    if (!(h3 ? d.SupportsHttp3() : d.SupportsProtocol(options_.preferred_protocol))) return false;
  }
  for (const auto& [key, value] : options_.preferred_labels) {
    auto it = d.labels.find(key);
    if (it == d.labels.end() || it->second != value) return false;
  }
  return true;
}

std::shared_ptr<ChooserState> PreferredChooser::Build(const std::vector<Peer*>& peers) {
  auto state = std::make_shared<PreferredState>();
  for (int i = 0; i < static_cast<int>(peers.size()); ++i) {
    (IsPreferred(peers[i]->descriptor()) ? state->preferred : state->others).push_back(i);
  }
  return state;
}

int PreferredChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  (void)meta;
  const auto* state = static_cast<const PreferredState*>(snapshot.chooser_state.get());
  if (state == nullptr) return -1;
  // Relaxed load + store, not a locked RMW: see RoundRobinChooser::Pick.
  const std::uint64_t start = cursor_.load(std::memory_order_relaxed);
  cursor_.store(start + 1, std::memory_order_relaxed);
  for (const auto* group : {&state->preferred, &state->others}) {
    const auto n = group->size();
    for (std::size_t i = 0; i < n; ++i) {
      int index = (*group)[(start + i) % n];
      if (Pickable(*snapshot.raw[index])) return index;
    }
  }
  return -1;
}

void PreferredChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta,
                                  int first, std::vector<int>* order) {
  (void)meta;
  (void)first;
  order->clear();
  const auto* state = static_cast<const PreferredState*>(snapshot.chooser_state.get());
  if (state == nullptr) return;
  order->insert(order->end(), state->preferred.begin(), state->preferred.end());
  order->insert(order->end(), state->others.begin(), state->others.end());
}

}  // namespace omnirelay::peers
