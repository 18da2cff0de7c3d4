#pragma once
// The three placement strategies: from a spec and a member list, the owner
// and replicas of every shard. Pure functions of their inputs: every node
// that computes a map from the same members and spec gets the same placement
// whatever order it learned the members in.
//
//   ring        consistent-hash ring: every member puts `virtual_nodes`
//               points on a 64-bit ring (hash of id and index); a shard's
//               point is the hash of (namespace, shard id); its owner is the
//               first member clockwise, replicas the next distinct members.
//   rendezvous  highest random weight: every member scores each shard with
//               Mix(hash(member) ^ hash(namespace, shard)); the owner is the
//               top score, replicas the next ones.
//   locality    rendezvous ranked first by placement tier (same zone as the
//               spec's preference, same region, elsewhere) then by score:
//               owners and replicas stay in the preferred zone/region while
//               it has members, and move out only as far as needed.
//
// Movement: a member's points/scores depend only on its own id, so adding a
// member moves only the shards it now wins (about 1/(n+1) of them), and
// removing one moves only the shards it owned (about 1/n): measured by
// strategy_test and printed by shards_bench.
#include <vector>

#include "omnirelay/core/status.h"
#include "omnirelay/shards/shard_map.h"

namespace omnirelay::shards {

// Computes a map (version 0, unstamped). INVALID_ARGUMENT for a bad spec or
// duplicate/empty member ids, FAILED_PRECONDITION for an empty member list.
core::StatusOr<ShardMap> ComputeShardMap(const ShardSpec& spec, std::vector<ShardNode> members);

// Fraction of shards whose owner differs between two maps of one namespace
// (compared by owner id).
double OwnerMovement(const ShardMap& before, const ShardMap& after);

}  // namespace omnirelay::shards
