#pragma once
// The peer kit's side of shard routing (docs/shards.md "Routing a call").
//
// ShardOutbound decides *which node* a keyed call goes to (the owner, or a
// replica under geo stickiness) and names it in the `rpc-shard-target`
// header; ShardTargetChooser, the chooser of the shard route's one dynamic
// peer pool, picks exactly that peer. The lease (per call), the breaker, the
// in-flight cap and the per-peer metrics are the peer kit's, as for every
// other outbound. There is no fallback to another peer: a call meant for a
// shard's owner never runs elsewhere (an unpickable target is -1, which the
// pool turns into UNAVAILABLE "shard-target-unreachable").
//
// With geo stickiness the chooser also carries the GeoChooser whose mode
// (local / fallback, with hysteresis) decides the region: its evaluation
// runs on this chooser's picks, over the pool's peers grouped by region.
//
// ChooseShardTarget is the stickiness rule itself (pure, unit-tested).
//
// Thread-safety: as every chooser (peers/chooser.h); Pick reads the header
// entries in place and looks the id up in a per-snapshot table (no
// allocation).
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/functional/function_ref.h"
#include "omnirelay/peers/chooser.h"
#include "omnirelay/peers/geo_chooser.h"
#include "omnirelay/shards/shard_map.h"

namespace omnirelay::shards {

// Names the node the sender chose for this call (owner or replica).
inline constexpr char kShardTargetHeader[] = "rpc-shard-target";
// "owner" or "replica": the role the sender chose the target for; a replica
// serves a call only when so marked and its own map names it a replica.
inline constexpr char kShardRoleHeader[] = "rpc-shard-role";

class ShardTargetChooser final : public peers::PeerChooser {
 public:
  explicit ShardTargetChooser(std::shared_ptr<peers::GeoChooser> geo = nullptr)
      : geo_(std::move(geo)) {}
  std::string_view name() const override { return "shard-target"; }
  std::shared_ptr<peers::ChooserState> Build(const std::vector<peers::Peer*>& peers) override;
  int Pick(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  void ProbeOrder(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;

 private:
  int TargetIndex(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta) const;
  std::shared_ptr<peers::GeoChooser> geo_;
};

// The target of a keyed call under `map` (docs/shards.md "Geo stickiness").
struct ShardTarget {
  const ShardNode* node = nullptr;
  bool replica = false;  // chosen as a replica of the shard, not its owner
};

// Without geo (`local_region` empty): the owner. With geo, the chosen region
// is `local_region` when `prefer_local`, every other region otherwise:
//   1. the owner, if it is this node (an owner always serves its own calls);
//   2. the owner, if it is in the chosen region;
//   3. the first replica (placement order) in the chosen region that is this
//      node or routable;
//   4. in fallback, this node if it is a replica (no network hop at all);
//   5. the owner.
ShardTarget ChooseShardTarget(const ShardMap& map, std::uint32_t shard, std::string_view self,
                              std::string_view local_region, bool prefer_local,
                              absl::FunctionRef<bool(std::string_view)> routable);

}  // namespace omnirelay::shards
