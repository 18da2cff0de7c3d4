#include "omnirelay/shards/shard_chooser.h"

namespace omnirelay::shards {
namespace {

struct IdHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Per pool snapshot: peer id -> index, and the geo chooser's own view of the
// same peers (its region groups) for its evaluation.
struct TargetState final : peers::ChooserState {
  std::unordered_map<std::string, int, IdHash, std::equal_to<>> index;
  peers::PeerSnapshot geo_view;
};

std::optional<std::string_view> TargetOf(const core::RequestMeta& meta) {
  // Header names are stored lower-cased: compare in place (Headers::Get
  // would build a normalised copy of the name).
  for (const auto& [name, value] : meta.headers.entries()) {
    if (name == kShardTargetHeader) return std::string_view(value);
  }
  return std::nullopt;
}

}  // namespace

std::shared_ptr<peers::ChooserState> ShardTargetChooser::Build(
    const std::vector<peers::Peer*>& peers) {
  auto state = std::make_shared<TargetState>();
  for (int i = 0; i < static_cast<int>(peers.size()); ++i) {
    state->index.emplace(peers[static_cast<std::size_t>(i)]->descriptor().id, i);
  }
  if (geo_) {
    state->geo_view.raw = peers;
    state->geo_view.chooser_state = geo_->Build(peers);
  }
  return state;
}

int ShardTargetChooser::TargetIndex(const peers::PeerSnapshot& snapshot,
                                    const core::RequestMeta& meta) const {
  const auto* state = static_cast<const TargetState*>(snapshot.chooser_state.get());
  if (state == nullptr) return -1;
  auto target = TargetOf(meta);
  if (!target) return -1;
  auto it = state->index.find(*target);
  return it == state->index.end() ? -1 : it->second;
}

int ShardTargetChooser::Pick(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  const int index = TargetIndex(snapshot, meta);
  if (geo_) {
    const auto* state = static_cast<const TargetState*>(snapshot.chooser_state.get());
    if (state != nullptr) {
      geo_->EvaluateIfDue(state->geo_view);
      if (index >= 0) geo_->CountRouted(state->geo_view, index);
    }
  }
  if (index < 0 || !peers::Pickable(*snapshot.raw[static_cast<std::size_t>(index)])) return -1;
  return index;
}

void ShardTargetChooser::ProbeOrder(const peers::PeerSnapshot& snapshot,
                                    const core::RequestMeta& meta, int first,
                                    std::vector<int>* order) {
  (void)first;
  order->clear();
  const int index = TargetIndex(snapshot, meta);
  if (index >= 0) order->push_back(index);
}

ShardTarget ChooseShardTarget(const ShardMap& map, std::uint32_t shard, std::string_view self,
                              std::string_view local_region, bool prefer_local,
                              absl::FunctionRef<bool(std::string_view)> routable) {
  const auto placement = map.Placement(shard);
  const ShardNode& owner = map.nodes[placement[0]];
  if (local_region.empty() || owner.id == self) return {&owner, false};
  auto in_chosen = [&](const ShardNode& n) {
    return prefer_local ? n.region == local_region : n.region != local_region;
  };
  if (in_chosen(owner)) return {&owner, false};
  const ShardNode* self_replica = nullptr;
  for (std::size_t r = 1; r < placement.size(); ++r) {
    const ShardNode& n = map.nodes[placement[r]];
    if (n.id == self) self_replica = &n;
    if (in_chosen(n) && (n.id == self || routable(n.id))) return {&n, true};
  }
  if (!prefer_local && self_replica != nullptr) return {self_replica, true};
  return {&owner, false};
}

}  // namespace omnirelay::shards
