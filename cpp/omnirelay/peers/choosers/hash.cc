#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

#include "omnirelay/peers/choosers/choosers.h"

namespace omnirelay::peers {
namespace {

constexpr int kPrefixBits = 16;

// A ring point and the peer that owns it, side by side: a lookup reads the
// owner from the line it found the point in (one cold line fewer at 1,000
// peers than parallel point/owner arrays).
struct RingPoint {
  std::uint64_t hash;
  int owner;  // peer index
};

struct Ring final : ChooserState {
  std::vector<RingPoint> points;  // sorted by hash
  // first[p] = index of the first point whose top 16 bits are >= p, so a
  // lookup scans only the (about points/65536) points sharing its prefix.
  std::vector<std::uint32_t> first;
  int peers = 0;
};

std::uint64_t Mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::size_t Locate(const Ring& ring, std::uint64_t hash) {
  std::size_t i = ring.first[hash >> (64 - kPrefixBits)];
  while (i < ring.points.size() && ring.points[i].hash < hash) ++i;
  return i == ring.points.size() ? 0 : i;  // wrap around
}

}  // namespace

HashChooser::HashChooser(const ChooserOptions& options) : options_(options) {
  options_.hash_virtual_nodes = std::max(options_.hash_virtual_nodes, 1);
}

std::uint64_t HashChooser::HashKey(std::string_view key) {
  // Eight bytes (little-endian) per multiply instead of FNV-1a's one: a
  // byte-wise FNV is a chain of one dependent multiply per byte, the largest
  // part of a hash pick for keys of 10-40 bytes. The length seeds the state
  // (the overlapping tail loads below make it part of the input) and the
  // SplitMix finaliser spreads every input bit over the result.
  // Ring points and keys go through the same function, so only its
  // stability within one deployment matters (every caller routing a key
  // runs this code); docs/peers.md "hash".
  static_assert(std::endian::native == std::endian::little,
                "the ring hash reads words little-endian; a big-endian port must byte-swap");
  std::uint64_t h = 0xcbf29ce484222325ull ^ (key.size() * 0x9E3779B97F4A7C15ull);
  const char* p = key.data();
  std::size_t left = key.size();
  auto absorb = [&h](std::uint64_t word) {
    // One multiply (and a shift to carry its high bits down) per word.
    h = (h ^ word) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
  };
  // Fixed-size loads only (a variable-size memcpy is a library call). The
  // tail is the last 8 bytes, overlapping the previous word, or for keys
  // under 8 bytes two overlapping 4-byte loads / three single bytes.
  auto load64 = [](const char* at) {
    std::uint64_t word;
    std::memcpy(&word, at, 8);
    return word;
  };
  auto load32 = [](const char* at) {
    std::uint32_t word;
    std::memcpy(&word, at, 4);
    return static_cast<std::uint64_t>(word);
  };
  if (left >= 8) {
    for (; left >= 8; p += 8, left -= 8) absorb(load64(p));
    if (left > 0) absorb(load64(p + left - 8));
  } else if (left >= 4) {
    absorb(load32(p) | load32(p + left - 4) << 32);
  } else if (left > 0) {
    absorb(static_cast<unsigned char>(p[0]) | static_cast<unsigned char>(p[left / 2]) << 8 |
           static_cast<std::uint64_t>(static_cast<unsigned char>(p[left - 1])) << 16);
  }
  return Mix(h);
}

std::string_view HashChooser::KeyOf(const core::RequestMeta& meta) const {
  const std::string& mode = options_.hash_key;
  if ((mode.empty() || mode == "shard-key") && !meta.shard_key.empty()) return meta.shard_key;
  if ((mode.empty() || mode == "routing-key") && !meta.routing_key.empty()) {
    return meta.routing_key;
  }
  if (mode.empty() || mode == "header") {
    if (auto value = meta.headers.Get(options_.hash_header)) return *value;
  }
  return {};
}

std::shared_ptr<ChooserState> HashChooser::Build(const std::vector<Peer*>& peers) {
  auto ring = std::make_shared<Ring>();
  ring->peers = static_cast<int>(peers.size());
  std::vector<std::pair<std::uint64_t, int>> points;
  points.reserve(peers.size() * options_.hash_virtual_nodes);
  for (int i = 0; i < static_cast<int>(peers.size()); ++i) {
    // Points depend only on the peer id: adding or removing a peer leaves
    // every other peer's points where they were (the ~1/N movement bound).
    for (int v = 0; v < options_.hash_virtual_nodes; ++v) {
      points.emplace_back(HashKey(peers[i]->id() + "#" + std::to_string(v)), i);
    }
  }
  std::sort(points.begin(), points.end());
  ring->points.reserve(points.size());
  for (const auto& [hash, index] : points) ring->points.push_back({hash, index});
  ring->first.assign((1u << kPrefixBits) + 1, 0);
  std::size_t cursor = 0;
  for (std::uint64_t p = 0; p <= (1u << kPrefixBits); ++p) {
    while (cursor < ring->points.size() && (ring->points[cursor].hash >> (64 - kPrefixBits)) < p) {
      ++cursor;
    }
    ring->first[p] = static_cast<std::uint32_t>(cursor);
  }
  return ring;
}

int HashChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  const auto* ring = static_cast<const Ring*>(snapshot.chooser_state.get());
  const auto n = snapshot.raw.size();
  if (ring == nullptr || n == 0 || ring->points.empty()) return -1;
  std::string_view key = KeyOf(meta);
  if (key.empty()) {
    // Relaxed load + store, not a locked RMW: see RoundRobinChooser::Pick.
    const std::uint64_t start = cursor_.load(std::memory_order_relaxed);
    cursor_.store(start + 1, std::memory_order_relaxed);
    for (std::size_t i = 0; i < n; ++i) {
      auto index = static_cast<int>((start + i) % n);
      if (Pickable(*snapshot.raw[index])) return index;
    }
    return -1;
  }
  std::size_t i = Locate(*ring, HashKey(key));
  int owner = ring->points[i].owner;
  // The owner keeps its keys even when busy: the coordinator then probes the
  // clockwise successors (ProbeOrder), which is where the keys would move.
  if (snapshot.raw[owner]->IsEligible()) return owner;
  // Not eligible: walk clockwise; bounded by the ring size.
  for (std::size_t step = 1; step < ring->points.size(); ++step) {
    int candidate = ring->points[(i + step) % ring->points.size()].owner;
    if (candidate != owner && snapshot.raw[candidate]->IsEligible()) return candidate;
  }
  return -1;
}

void HashChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                             std::vector<int>* order) {
  const auto* ring = static_cast<const Ring*>(snapshot.chooser_state.get());
  std::string_view key = KeyOf(meta);
  if (ring == nullptr || key.empty() || ring->points.empty()) {
    PeerChooser::ProbeOrder(snapshot, meta, first, order);
    return;
  }
  order->clear();
  std::vector<bool> seen(snapshot.raw.size());
  std::size_t i = Locate(*ring, HashKey(key));
  for (std::size_t step = 0; step < ring->points.size() && order->size() < seen.size(); ++step) {
    int candidate = ring->points[(i + step) % ring->points.size()].owner;
    if (!seen[candidate]) {
      seen[candidate] = true;
      order->push_back(candidate);
    }
  }
}

}  // namespace omnirelay::peers
