#pragma once
// Helpers shared by the shard route's allocation test and benchmark.
#include <vector>

#include "omnirelay/peers/peer.h"
#include "omnirelay/shards/shard_map.h"

namespace omnirelay::shards::testing {

// The map's nodes as available peers of a coordinator (id, address, region),
// as the shard route's forwarding pool holds them.
inline std::vector<peers::PeerDescriptor> AvailablePeersOf(const std::vector<ShardNode>& nodes) {
  std::vector<peers::PeerDescriptor> descriptors;
  descriptors.reserve(nodes.size());
  for (const auto& node : nodes) {
    peers::PeerDescriptor d;
    d.id = node.id;
    d.endpoint = node.address;
    d.region = node.region;
    d.status = peers::PeerStatus::kAvailable;
    descriptors.push_back(std::move(d));
  }
  return descriptors;
}

}  // namespace omnirelay::shards::testing
