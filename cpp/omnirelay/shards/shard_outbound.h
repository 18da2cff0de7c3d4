#pragma once
// ShardOutbound: the outbound behind a namespace's shard route. A call to the
// namespace's service carrying Rpc-Shard-Key (unary, and server-stream,
// client-stream and duplex procedures routed to it) goes to the shard's owner
// under this node's current map version:
//
//   * owner is this node -> served here by `local_service`'s procedure of the
//     same name (the route's own service would route to itself), metered per
//     shard;
//   * owner is another node -> forwarded over gRPC to the owner's address
//     with `rpc-shard-forwarded-by` and `rpc-shard-version`; the owner serves
//     it only if its own map names it (a node serves a shard only under a map
//     version that names it); a forwarded call for a shard it no longer owns
//     is passed on only if its own version is newer than the sender's (the
//     version rises with every hop, so there is no loop); if the sender's is
//     newer, it waits (timer, bounded: 2 s and the deadline) until its own
//     map catches up and routes again; otherwise it is refused:
//     UNAVAILABLE "not-shard-owner".
//
// Geo stickiness (`geo` set): the target is chosen by ChooseShardTarget
// (shard_chooser.h) in the region the geo chooser picks (local, or the other
// regions after it fell back), so it may be a replica; such calls carry
// `rpc-shard-role: replica`, and the replica serves them only if its own map
// names it a replica of the shard (else the owner rules above apply).
//
// Forwarding goes through ONE dynamic peer pool per shard route (the peer
// kit's coordinator: a lease per call, per-peer breaker, in-flight cap and
// metrics) and one GrpcOutbound over it: the pool's peers are the nodes of
// the held maps (this node excluded; address = the node's advertised address
// or its `peer_addresses` entry), following every installed version without
// restart; the pool's chooser (ShardTargetChooser) picks the peer named in
// `rpc-shard-target`. Threads: the GrpcOutbound's (forward.threads queues +
// its acquire workers), whatever the number of owners.
//
// Shard backpressure (`throttle_pressured_shards`): while the router flags a
// shard as under backpressure (backpressure/shard_source.h: its QPS crossed
// the budget), calls served here for it are admitted up to `budget` per
// second and the rest refused RESOURCE_EXHAUSTED "shard-backpressure" with a
// retry-after hint, so the owner itself throttles instead of only signalling.
//
// Responses of served unary calls carry `rpc-shard-id`, `rpc-shard-owner`
// (the owner under the serving node's map), `rpc-shard-version`,
// `rpc-shard-served-by` and `rpc-shard-role`. Errors of ShardRouter::Route
// pass through unchanged (router.h). The namespace is the route's, or the
// `rpc-shard-namespace` header's when a caller names one (an unknown one is
// FAILED_PRECONDITION).
//
// Thread-safety: CallUnary/OpenStream from any thread. The data path reads
// the held map (router) and one atomic per namespace (is the pool synced
// with that map?); resyncing the pool takes `sync_mu_`. A locally served
// stream runs its handler on a thread of its own (LocalShardStream).
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "omnirelay/core/metrics.h"
#include "omnirelay/dispatcher/dispatcher.h"
#include "omnirelay/peers/geo_chooser.h"
#include "omnirelay/shards/router.h"
#include "omnirelay/shards/shard_chooser.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::transport {
class PeerPool;
class GrpcOutbound;
}  // namespace omnirelay::transport

namespace omnirelay::shards {

inline constexpr char kShardNamespaceHeader[] = "rpc-shard-namespace";
inline constexpr char kShardForwardedByHeader[] = "rpc-shard-forwarded-by";
inline constexpr char kShardVersionHeader[] = "rpc-shard-version";
inline constexpr char kShardIdHeader[] = "rpc-shard-id";
inline constexpr char kShardOwnerHeader[] = "rpc-shard-owner";
inline constexpr char kShardServedByHeader[] = "rpc-shard-served-by";

extern const core::MetricDescriptor kShardCallsMetric;  // counter {namespace, outcome}

// The shard route's forwarding pool (`omniRelay.shards.namespaces.<ns>.forward`).
struct ShardForwardOptions {
  int max_in_flight_per_peer = 0;        // 0 = unlimited
  int breaker_consecutive_failures = 5;  // 0 disables the per-peer breaker
  core::Duration breaker_open_delay = std::chrono::seconds(1);
  int threads = 2;  // completion-queue threads of the GrpcOutbound
};

struct ShardOutboundOptions {
  std::string ns;
  std::string local_service;
  // node id -> dial address override (mesh.peerAddresses: fault proxies, NAT).
  std::map<std::string, std::string> peer_addresses;
  std::optional<tls::TlsOptions> tls;
  ShardForwardOptions forward = {};
  // Geo stickiness; `region` must be set (the caller's region).
  std::optional<peers::GeoChooserOptions> geo = std::nullopt;
  // A saturated shard throttles the node serving it (see the header
  // comment); off by default (backpressure.shardThrottle).
  bool throttle_pressured_shards = false;
  core::Duration retry_after = std::chrono::seconds(1);
};

class ShardOutbound final : public dispatcher::Outbound,
                            public std::enable_shared_from_this<ShardOutbound> {
 public:
  ShardOutbound(ShardOutboundOptions options, std::shared_ptr<const ShardRouter> router,
                std::weak_ptr<dispatcher::Dispatcher> dispatcher,
                std::shared_ptr<core::Clock> clock, std::shared_ptr<core::MetricsRegistry> metrics);
  ~ShardOutbound() override;

  std::string_view transport() const override { return "shard"; }
  // Makes the pool and its GrpcOutbound; subscribes to map installs.
  absl::Status Start() override;
  void Stop() override;
  void CallUnary(dispatcher::Request request, dispatcher::UnaryCallback done) override;
  absl::StatusOr<std::unique_ptr<dispatcher::OutboundStream>> OpenStream(
      const core::RequestMeta& meta) override;
  nlohmann::json Snapshot() const override;

  // The forwarding pool (null before Start): tests and diagnostics.
  std::shared_ptr<transport::PeerPool> pool() const;
  // The geo chooser deciding the region (null without geo).
  const std::shared_ptr<peers::GeoChooser>& geo() const { return geo_; }
  // Makes the pool's peers the nodes of every held map now (also done on
  // each map install and lazily by calls that see a map not synced yet).
  void SyncPeers();

 private:
  // A forwarded call whose sender holds a newer map version than this node
  // waits for it in steps of kVersionWait, at most kMaxVersionWaits times.
  static constexpr core::Duration kVersionWait = std::chrono::milliseconds(20);
  static constexpr int kMaxVersionWaits = 100;

  struct Decision {
    enum class Kind { kServe, kForward, kWait, kRefuse } kind = Kind::kRefuse;
    absl::Status status;
    std::string ns;
    ShardRoute route;
    const ShardNode* target = nullptr;  // kForward (and kServe: this node)
    bool replica = false;               // served / sent as a replica
    bool pass_on = false;               // a forwarded call passed on under a newer version
  };
  Decision Decide(const core::RequestMeta& meta, int waits);
  void Route(dispatcher::Request request, dispatcher::UnaryCallback done, int waits);
  // RESOURCE_EXHAUSTED when the shard is under backpressure and over its
  // per-second budget here; OK (and metered) otherwise.
  absl::Status Admit(const Decision& d);
  void ServeLocally(dispatcher::Request request, const Decision& d, dispatcher::UnaryCallback done);
  absl::StatusOr<std::unique_ptr<dispatcher::OutboundStream>> OpenLocalStream(
      const core::RequestMeta& meta, const Decision& d);
  void Mark(core::RequestMeta& meta, const Decision& d) const;
  void EnsureSynced(const std::string& ns, const ShardMap* map);
  std::string LocalService(const std::string& ns) const;
  void Count(std::string_view outcome);

  ShardOutboundOptions options_;
  std::shared_ptr<const ShardRouter> router_;
  std::weak_ptr<dispatcher::Dispatcher> dispatcher_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<core::MetricsRegistry> metrics_;
  std::shared_ptr<peers::GeoChooser> geo_;
  std::shared_ptr<transport::PeerPool> pool_;
  std::shared_ptr<transport::GrpcOutbound> forward_;
  // Per router namespace (same order): the map the pool was last synced
  // with (compared by address; a held map is immutable and kept alive by
  // `synced_maps_`).
  std::unique_ptr<std::atomic<const ShardMap*>[]> synced_;
  mutable std::mutex sync_mu_;
  std::vector<std::shared_ptr<const ShardMap>> synced_maps_;  // guarded by sync_mu_
  std::atomic<bool> stopped_{false};
  bool started_ = false;
};

}  // namespace omnirelay::shards
