#pragma once
// The chooser interface, the immutable peer snapshot it reads, and the
// name -> factory table that configuration ("peerChooser": "fewest-pending")
// resolves through.
//
// Division of labour with PeerListCoordinator:
//   * Build() derives per-list state (hash ring, preferred subset, pending
//     buckets) once per membership change; it lives in the snapshot, so a
//     pick always reads state that matches the peer vector it indexes.
//   * Pick() names the peer to try first: an eligible peer with spare
//     capacity, or -1. This is the hot path and must not allocate.
//   * ProbeOrder() lists every peer in the order the coordinator probes them
//     when the first choice refused (slow path; may allocate).
//   * OnPeerChanged() hears about load/eligibility changes of one peer, for
//     choosers that keep their own index (fewest-pending); tracks_load() says
//     whether a chooser wants it.
//
// Thread-safety: Pick/ProbeOrder/OnPeerChanged are called concurrently from
// any thread; Build is called under the coordinator's update lock.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"
#include "omnirelay/peers/peer.h"

namespace omnirelay::peers {

// Chooser-specific derived state stored in a snapshot.
class ChooserState {
 public:
  virtual ~ChooserState() = default;
};

// What the data plane reads: swapped as a whole on every membership change,
// never mutated after publication (peers themselves are live objects).
struct PeerSnapshot {
  std::uint64_t version = 0;
  std::vector<std::shared_ptr<Peer>> peers;
  std::vector<Peer*> raw;  // peers[i].get(), contiguous for hot loops
  std::unordered_map<std::string, int> index_by_id;
  std::shared_ptr<ChooserState> chooser_state;
  // Keeps the coordinator's shared state alive while the snapshot is held
  // (by the coordinator, a thread's snapshot cache, a waiting Acquire).
  std::shared_ptr<void> owner;
};

// Seedable, lock-free random source: SplitMix64 over an atomic counter, so a
// single-threaded sequence is a pure function of the seed (deterministic
// tests) and concurrent callers never block each other. The counter advances
// with a relaxed load + store, not a locked fetch_add (a locked RMW is the
// largest single cost of a pick): two threads racing may draw the same value
// once, which only correlates those two picks.
class SeededRandom {
 public:
  explicit SeededRandom(std::uint64_t seed) : state_(seed) {}
  std::uint64_t Next() {
    std::uint64_t z = state_.load(std::memory_order_relaxed) + 0x9E3779B97F4A7C15ull;
    state_.store(z, std::memory_order_relaxed);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) (Lemire's multiply-shift on 32 random bits; bias < n/2^32).
  std::uint32_t Below(std::uint32_t n) {
    return static_cast<std::uint32_t>(((Next() >> 32) * static_cast<std::uint64_t>(n)) >> 32);
  }

 private:
  std::atomic<std::uint64_t> state_;
};

struct ChooserOptions {
  // Seed of every random choice; 0 picks one from std::random_device.
  std::uint64_t seed = 0;
  // hash: where the key comes from, in order: shard key, routing key, then this
  // header. `hash_key` = "shard-key", "routing-key" or "header" restricts to one.
  std::string hash_key;  // empty = the fallback chain above
  std::string hash_header = "session-id";
  int hash_virtual_nodes = 128;  // ring points per peer
  // preferred: a peer is preferred when it matches every non-empty criterion.
  std::string preferred_zone;
  std::string preferred_region;
  std::string preferred_protocol;  // e.g. "h3"
  std::map<std::string, std::string> preferred_labels;
  std::vector<std::string> preferred_ids;
  // sticky (sticky_chooser.h): the session key header, and how many sessions
  // one peer holds (1 = one session per instance; 0 = unlimited).
  std::string sticky_header = "session-id";
  int sticky_occupancy = 1;
};

class PeerChooser {
 public:
  virtual ~PeerChooser() = default;
  virtual std::string_view name() const = 0;
  virtual std::shared_ptr<ChooserState> Build(const std::vector<Peer*>& peers) {
    (void)peers;
    return nullptr;
  }
  virtual int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) = 0;
  // Default: start at `first` (or 0) and go round the list.
  virtual void ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                          std::vector<int>* order);
  virtual bool tracks_load() const { return false; }
  virtual void OnPeerChanged(const PeerSnapshot& snapshot, int index) {
    (void)snapshot;
    (void)index;
  }
};

// A pickable peer: eligible and below its cap.
inline bool Pickable(const Peer& peer) { return peer.IsEligible() && !peer.AtCapacity(); }

using ChooserFactory = std::function<std::unique_ptr<PeerChooser>(const ChooserOptions&)>;

// The explicit table of built-in choosers: "round-robin", "two-random",
// "fewest-pending", "preferred", "hash", "least-latency", "sticky".
const std::map<std::string, ChooserFactory, std::less<>>& BuiltinChoosers();
std::vector<std::string> ChooserNames();
// InvalidArgument naming the known choosers when `name` is unknown.
absl::StatusOr<std::unique_ptr<PeerChooser>> CreateChooser(std::string_view name,
                                                           const ChooserOptions& options = {});

}  // namespace omnirelay::peers
