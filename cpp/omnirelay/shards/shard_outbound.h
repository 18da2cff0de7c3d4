#pragma once
// ShardOutbound: the outbound behind a namespace's shard route. A unary call
// to the namespace's service carrying Rpc-Shard-Key goes to the shard's owner
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
// Responses carry `rpc-shard-id`, `rpc-shard-owner`, `rpc-shard-version`.
// Errors of ShardRouter::Route pass through unchanged (router.h). The
// namespace is the route's, or the `rpc-shard-namespace` header's when a
// caller names one (an unknown one is FAILED_PRECONDITION).
//
// Per-owner outbounds are ordinary GrpcOutbounds over a one-endpoint peer
// pool (created on first use, kept per (node id, address)); the transport's
// peer-list mechanics are not touched. Streams are not shard-routed yet
// (UNIMPLEMENTED).
//
// Thread-safety: CallUnary from any thread; the per-owner table takes a
// mutex only to find or create an owner's outbound.
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "omnirelay/core/metrics.h"
#include "omnirelay/dispatcher/dispatcher.h"
#include "omnirelay/shards/router.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::shards {

inline constexpr char kShardNamespaceHeader[] = "rpc-shard-namespace";
inline constexpr char kShardForwardedByHeader[] = "rpc-shard-forwarded-by";
inline constexpr char kShardVersionHeader[] = "rpc-shard-version";
inline constexpr char kShardIdHeader[] = "rpc-shard-id";
inline constexpr char kShardOwnerHeader[] = "rpc-shard-owner";

extern const core::MetricDescriptor kShardCallsMetric;  // counter {namespace, outcome}

struct ShardOutboundOptions {
  std::string ns;
  std::string local_service;
  // node id -> dial address override (mesh.peerAddresses: fault proxies, NAT).
  std::map<std::string, std::string> peer_addresses;
  std::optional<tls::TlsOptions> tls;
};

class ShardOutbound final : public dispatcher::Outbound,
                            public std::enable_shared_from_this<ShardOutbound> {
 public:
  ShardOutbound(ShardOutboundOptions options, std::shared_ptr<const ShardRouter> router,
                std::weak_ptr<dispatcher::Dispatcher> dispatcher,
                std::shared_ptr<core::Clock> clock, std::shared_ptr<core::MetricsRegistry> metrics);
  ~ShardOutbound() override;

  std::string_view transport() const override { return "shard"; }
  void Stop() override;
  void CallUnary(dispatcher::Request request, dispatcher::UnaryCallback done) override;
  nlohmann::json Snapshot() const override;

 private:
  // A forwarded call whose sender holds a newer map version than this node
  // waits for it in steps of kVersionWait, at most kMaxVersionWaits times.
  static constexpr core::Duration kVersionWait = std::chrono::milliseconds(20);
  static constexpr int kMaxVersionWaits = 100;
  void Route(dispatcher::Request request, dispatcher::UnaryCallback done, int waits);
  void ServeLocally(dispatcher::Request request, const ShardRoute& route,
                    dispatcher::UnaryCallback done);
  core::StatusOr<std::shared_ptr<dispatcher::Outbound>> OwnerOutbound(const ShardNode& owner);
  void Count(std::string_view outcome);

  ShardOutboundOptions options_;
  std::shared_ptr<const ShardRouter> router_;
  std::weak_ptr<dispatcher::Dispatcher> dispatcher_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<core::MetricsRegistry> metrics_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<dispatcher::Outbound>> owners_;  // "id@address"
  bool stopped_ = false;
};

}  // namespace omnirelay::shards
