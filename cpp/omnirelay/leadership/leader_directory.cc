#include "omnirelay/leadership/leader_directory.h"

namespace omnirelay::leadership {

void LeaderDirectory::Set(const std::string& scope, const std::optional<LeaderInfo>& leader) {
  std::vector<Listener> listeners;
  {
    std::lock_guard lock(mu_);
    auto it = leaders_.find(scope);
    const bool changed =
        leader ? (it == leaders_.end() || !(it->second == *leader)) : it != leaders_.end();
    if (leader) {
      leaders_[scope] = *leader;
    } else {
      leaders_.erase(scope);
    }
    generation_.fetch_add(1, std::memory_order_acq_rel);
    if (changed) listeners = listeners_;
  }
  for (const auto& listener : listeners) listener(scope, leader);
}

void LeaderDirectory::AddListener(Listener listener) {
  std::lock_guard lock(mu_);
  listeners_.push_back(std::move(listener));
}

std::optional<LeaderInfo> LeaderDirectory::Get(std::string_view scope) const {
  std::lock_guard lock(mu_);
  auto it = leaders_.find(scope);
  if (it == leaders_.end()) return std::nullopt;
  return it->second;
}

std::map<std::string, LeaderInfo> LeaderDirectory::All() const {
  std::lock_guard lock(mu_);
  return {leaders_.begin(), leaders_.end()};
}

namespace {
std::atomic<std::uint64_t> next_chooser_id{1};

// Per thread: the last answer of one chooser, valid while neither the
// directory's generation nor the peer snapshot changed.
struct PickCache {
  std::uint64_t chooser = 0;
  std::uint64_t generation = 0;
  const peers::PeerSnapshot* snapshot = nullptr;
  std::uint64_t snapshot_version = 0;
  int index = -1;
};
thread_local PickCache pick_cache;
}  // namespace

LeaderChooser::LeaderChooser(std::shared_ptr<const LeaderDirectory> directory, std::string scope)
    : directory_(std::move(directory)), scope_(std::move(scope)), id_(next_chooser_id++) {}

int LeaderChooser::LeaderIndex(const peers::PeerSnapshot& snapshot) {
  const std::uint64_t generation = directory_->generation();
  PickCache& cache = pick_cache;
  if (cache.chooser == id_ && cache.generation == generation && cache.snapshot == &snapshot &&
      cache.snapshot_version == snapshot.version) {
    return cache.index;
  }
  int index = -1;
  if (auto leader = directory_->Get(scope_)) {
    auto it = snapshot.index_by_id.find(leader->node);
    if (it != snapshot.index_by_id.end()) index = it->second;
  }
  cache = PickCache{id_, generation, &snapshot, snapshot.version, index};
  return index;
}

int LeaderChooser::Pick(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  (void)meta;
  const int index = LeaderIndex(snapshot);
  if (index < 0 || !peers::Pickable(*snapshot.raw[static_cast<size_t>(index)])) return -1;
  return index;
}

void LeaderChooser::ProbeOrder(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta,
                               int first, std::vector<int>* order) {
  (void)meta;
  (void)first;
  order->clear();
  const int index = LeaderIndex(snapshot);
  if (index >= 0) order->push_back(index);
}

}  // namespace omnirelay::leadership
