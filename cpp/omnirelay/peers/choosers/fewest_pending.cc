#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "omnirelay/peers/choosers/choosers.h"

namespace omnirelay::peers {
namespace {

// Guards the buckets for the few vector operations of a pick or an update.
// A test-and-test-and-set lock: lock is one exchange, unlock a plain release
// store, where std::mutex costs a call and a locked instruction on each side
// (two picks' worth of time per lease, measured). A waiter spins briefly and
// then yields: the holder may have been preempted on a loaded machine.
class SpinLock {
 public:
  void lock() {
    while (locked_.exchange(true, std::memory_order_acquire)) {
      for (int spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
        if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
  void unlock() { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

// Peers bucketed by in-flight count. Invariant (under mu): for every peer i
// with level[i] >= 0, buckets[level[i]][pos[i]] == i; min_level is the lowest
// non-empty bucket (buckets.size() when none). level -1 = not pickable
// (ineligible); such peers are in no bucket.
struct Buckets final : ChooserState {
  SpinLock mu;
  std::vector<int> level;
  std::vector<int> pos;
  std::vector<std::vector<int>> buckets;
  std::size_t min_level = 0;

  void Remove(int i) {
    int l = level[i];
    if (l < 0) return;
    auto& bucket = buckets[l];
    int last = bucket.back();
    bucket[pos[i]] = last;
    pos[last] = pos[i];
    bucket.pop_back();
    level[i] = -1;
    if (static_cast<std::size_t>(l) == min_level) {
      while (min_level < buckets.size() && buckets[min_level].empty()) ++min_level;
    }
  }
  void Insert(int i, int l) {
    if (static_cast<std::size_t>(l) >= buckets.size()) buckets.resize(l + 1);
    level[i] = l;
    pos[i] = static_cast<int>(buckets[l].size());
    buckets[l].push_back(i);
    if (static_cast<std::size_t>(l) < min_level) min_level = l;
  }
  void Place(int i, int l) {
    if (level[i] == l) return;
    Remove(i);
    if (l >= 0) Insert(i, l);
  }
};

constexpr std::size_t kPreallocatedLevels = 4;

int LevelOf(const Peer& peer) { return peer.IsEligible() ? std::max(peer.inflight(), 0) : -1; }

}  // namespace

FewestPendingChooser::FewestPendingChooser(const ChooserOptions& options) : random_(options.seed) {}

std::shared_ptr<ChooserState> FewestPendingChooser::Build(const std::vector<Peer*>& peers) {
  auto state = std::make_shared<Buckets>();
  state->level.assign(peers.size(), -1);
  state->pos.assign(peers.size(), 0);
  // Every bucket of the first levels gets room for all peers up front, so
  // moving a peer between them never grows a vector on the pick/release path:
  // a bucket first used only after warm-up (e.g. the geo chooser's other
  // region, picked only once the mode flips) would otherwise allocate on its
  // first pick. Only in-flight peaks beyond these levels allocate (once per
  // new level and snapshot). 4 levels x n ints: 16 KB at 1,000 peers.
  state->buckets.resize(kPreallocatedLevels);
  for (auto& bucket : state->buckets) bucket.reserve(peers.size());
  state->min_level = state->buckets.size();
  for (int i = 0; i < static_cast<int>(peers.size()); ++i) {
    int l = LevelOf(*peers[i]);
    if (l >= 0) state->Insert(i, l);
  }
  return state;
}

int FewestPendingChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  (void)meta;
  auto* state = static_cast<Buckets*>(snapshot.chooser_state.get());
  if (state == nullptr) return -1;
  std::lock_guard lock(state->mu);
  // Normally the first draw is pickable; a few stale entries (a peer whose
  // breaker just opened, or at its cap) are re-placed and we draw again.
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (state->min_level >= state->buckets.size()) return -1;
    const auto& bucket = state->buckets[state->min_level];
    int index = bucket[random_.Below(static_cast<std::uint32_t>(bucket.size()))];
    Peer& peer = *snapshot.raw[index];
    if (Pickable(peer)) {
      // Count the lease we are about to take, so concurrent picks spread out;
      // the owner's OnPeerChanged after a refused TryAcquire corrects it.
      state->Place(index, state->level[index] + 1);
      return index;
    }
    int actual = LevelOf(peer);
    if (actual >= 0 && peer.AtCapacity()) {
      // At its cap but still the least loaded: nothing better exists.
      if (actual == state->level[index]) return -1;
    }
    state->Place(index, actual);
  }
  return -1;
}

void FewestPendingChooser::OnPeerChanged(const PeerSnapshot& snapshot, int index) {
  auto* state = static_cast<Buckets*>(snapshot.chooser_state.get());
  if (state == nullptr || index < 0 || index >= static_cast<int>(snapshot.raw.size())) return;
  std::lock_guard lock(state->mu);
  // Read the authoritative count under the lock: the last writer wins, and
  // it wrote the current value, so concurrent updates converge.
  state->Place(index, LevelOf(*snapshot.raw[index]));
}

void FewestPendingChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta,
                                      int first, std::vector<int>* order) {
  const auto n = static_cast<std::uint32_t>(snapshot.raw.size());
  PeerChooser::ProbeOrder(snapshot, meta, n == 0 ? first : static_cast<int>(random_.Below(n)),
                          order);
  std::vector<int> load(n);
  for (std::uint32_t i = 0; i < n; ++i) load[i] = snapshot.raw[i]->inflight();
  std::stable_sort(order->begin(), order->end(), [&](int x, int y) { return load[x] < load[y]; });
}

}  // namespace omnirelay::peers
