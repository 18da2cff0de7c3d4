#pragma once
// The built-in choosers. Each is small; docs/peers.md gives the algorithm and
// cost of each. All are thread-safe (see chooser.h for the contract).
#include <memory>
#include <vector>

#include "omnirelay/peers/chooser.h"

namespace omnirelay::peers {

// Rotates through the list with one shared atomic cursor; skips peers that
// are not pickable. O(1) when the next peer is pickable.
class RoundRobinChooser final : public PeerChooser {
 public:
  explicit RoundRobinChooser(const ChooserOptions& options);
  std::string_view name() const override { return "round-robin"; }
  int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) override;

 private:
  std::atomic<std::uint64_t> cursor_{0};
};

// Power of two choices on in-flight count: two distinct random peers, the
// less loaded wins (ties: the first drawn, itself random). O(1).
class TwoRandomChooser final : public PeerChooser {
 public:
  explicit TwoRandomChooser(const ChooserOptions& options);
  std::string_view name() const override { return "two-random"; }
  int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  void ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;

 private:
  SeededRandom random_;
};

// Exact fewest-pending with uniform tie-breaking, without a linear scan: peers
// live in buckets indexed by in-flight count; a pick draws uniformly from the
// lowest non-empty bucket. Acquire/release move a peer between adjacent
// buckets in O(1). Ineligible peers sit outside the buckets.
class FewestPendingChooser final : public PeerChooser {
 public:
  explicit FewestPendingChooser(const ChooserOptions& options);
  std::string_view name() const override { return "fewest-pending"; }
  std::shared_ptr<ChooserState> Build(const std::vector<Peer*>& peers) override;
  int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  void ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;
  bool tracks_load() const override { return true; }
  void OnPeerChanged(const PeerSnapshot& snapshot, int index) override;

 private:
  SeededRandom random_;
};

// Tries the preferred subset (zone/region/protocol/labels/ids) round-robin;
// falls back to round-robin over the rest when no preferred peer is pickable.
class PreferredChooser final : public PeerChooser {
 public:
  explicit PreferredChooser(const ChooserOptions& options);
  std::string_view name() const override { return "preferred"; }
  std::shared_ptr<ChooserState> Build(const std::vector<Peer*>& peers) override;
  int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  void ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;
  bool IsPreferred(const PeerDescriptor& descriptor) const;

 private:
  ChooserOptions options_;
  std::atomic<std::uint64_t> cursor_{0};
};

// Consistent hashing on a ring of `hash_virtual_nodes` points per peer; a
// 2^16-entry prefix table makes a lookup O(1). The key's owner is the first
// point clockwise; if it is not eligible the walk continues clockwise, so
// keys of a removed peer spread over the others and nobody else's keys move.
// Requests without a key fall back to round-robin.
class HashChooser final : public PeerChooser {
 public:
  explicit HashChooser(const ChooserOptions& options);
  std::string_view name() const override { return "hash"; }
  std::shared_ptr<ChooserState> Build(const std::vector<Peer*>& peers) override;
  int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  void ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;
  // The key the request hashes on, or empty.
  std::string_view KeyOf(const core::RequestMeta& meta) const;
  static std::uint64_t HashKey(std::string_view key);

 private:
  ChooserOptions options_;
  std::atomic<std::uint64_t> cursor_{0};
};

// Power of two choices weighted by latency (Finagle's P2C + EWMA): of two
// random pickable peers, the lower cost wins, cost = ewma_ms * (inflight + 1).
// A peer without samples costs 0 so new peers get measured. O(1).
class LeastLatencyChooser final : public PeerChooser {
 public:
  explicit LeastLatencyChooser(const ChooserOptions& options);
  std::string_view name() const override { return "least-latency"; }
  int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  void ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;
  static double Cost(const Peer& peer);

 private:
  SeededRandom random_;
};

// Power of two choices, shared by two-random (cost = in-flight) and
// least-latency (cost = EWMA x queue): two distinct uniform draws, the lower
// cost wins (a tie keeps the first draw). When neither draw is pickable, scans
// on from the first draw so the fallback stays unbiased. -1 if no peer is.
template <typename CostFn>
int PickPowerOfTwo(const PeerSnapshot& snapshot, SeededRandom& random, CostFn cost) {
  const auto n = static_cast<std::uint32_t>(snapshot.raw.size());
  if (n == 0) return -1;
  if (n == 1) return Pickable(*snapshot.raw[0]) ? 0 : -1;
  // Both draws from one 64-bit value (its halves are independent uniform
  // 32-bit numbers): one RNG step per pick instead of two.
  const std::uint64_t bits = random.Next();
  const auto a = static_cast<std::uint32_t>(((bits >> 32) * n) >> 32);
  auto b = static_cast<std::uint32_t>(((bits & 0xFFFFFFFFu) * (n - 1)) >> 32);
  if (b >= a) ++b;  // distinct, still uniform
  const Peer& pa = *snapshot.raw[a];
  const Peer& pb = *snapshot.raw[b];
  const bool ok_a = Pickable(pa), ok_b = Pickable(pb);
  if (ok_a && ok_b) return cost(pb) < cost(pa) ? static_cast<int>(b) : static_cast<int>(a);
  if (ok_a) return static_cast<int>(a);
  if (ok_b) return static_cast<int>(b);
  for (std::uint32_t i = 1; i < n; ++i) {
    const auto index = (a + i) % n;
    if (Pickable(*snapshot.raw[index])) return static_cast<int>(index);
  }
  return -1;
}

}  // namespace omnirelay::peers
