#pragma once
// A node: one dispatcher with its inbounds (gRPC, HTTP), outbounds, routes,
// middleware and admin endpoints, built from a config::NodeConfig. This is
// what `omnirelay serve`, `omnirelay echo` and Python's omnirelay.Node run.
//
// Admin endpoints (on the admin address):
//   GET  /healthz                         liveness
//   GET  /readyz                          200 {"ready":true} or 503 with reasons
//                                         ("draining", "outbound 'x' has no available peers")
//   GET  /metrics                         Prometheus text of core::MetricsRegistry::Default()
//   GET  /omnirelay/introspect            dispatcher snapshot + addresses + config
//   GET  /omnirelay/traces                recorded spans (JSON)
//   GET  /omnirelay/echo/stats            echo procedure stats (when enabled)
//   GET  /omnirelay/gateway               gateway routes, members, bindings (gateway mode)
//   GET  /omnirelay/control/lease-health  peer lease health per outbound (+ "mesh")
//   GET  /omnirelay/control/peers         mesh members (mesh nodes; docs/mesh.md)
//   POST /omnirelay/control/backpressure?mode=normal|backpressure
//   GET  /omnirelay/control/backpressure  latest ResourceLease backpressure per namespace
//   GET  /omnirelay/control/backpressure/stream   transitions as Server-Sent Events
//   GET  /omnirelay/control/resourcelease         queue stats per namespace
//   GET  /omnirelay/control/resourcelease/health  queue health probe (503 when drained)
//   GET  /omnirelay/control/replication/checkpoint replication positions per sink/shard
//   GET  /omnirelay/control/leaders       every observed scope: leader, fencing token,
//                                         lease expiry, this node's candidacy (leadership on)
//   POST /omnirelay/control/promote?scope=S&node=N   hand scope S over to node N
//   POST /omnirelay/control/fenced-write?scope=S&key=K&value=V  a control write as
//                                         leader of S (412 when not leader / fenced)
//   GET  /omnirelay/control/shards[?namespace=N]  shard maps: version, owners,
//                                         replicas, per-shard QPS served here, budget
//   GET  /omnirelay/control/shards/resolve?namespace=N&key=K  key -> shard -> owner
//   POST /omnirelay/control/shards/rebalance?namespace=N&shard=S[&to=NODE]  move a shard
//                                         to a replica through the leader; waits for the version
//
// Control plane (docs/security.md): POST /omnirelay/control/* needs
// `Authorization: Bearer <omniRelay.admin.tokenFile>` or a verified client
// certificate (admin over mTLS); 401 without either, 403 when neither is
// configured. Other GETs follow omniRelay.admin.readAccess (open | token);
// /healthz and /readyz stay open for probes.
//
// Drain protocol: Drain() makes new calls fail Unavailable (HTTP 503 +
// retry-after) and /readyz 503; WaitIdle() waits for admitted calls; Stop()
// then closes listeners and outbounds.
//
// Thread-safety: Register before Start from one thread; Start/Drain/Stop
// from one controlling thread; the accessors are thread-safe.
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "omnirelay/backpressure/hub.h"
#include "omnirelay/backpressure/mesh_link.h"
#include "omnirelay/backpressure/shard_source.h"
#include "omnirelay/config/config.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/dispatcher/dispatcher.h"
#include "omnirelay/dispatcher/echo.h"
#include "omnirelay/gateway/gateway.h"
#include "omnirelay/h2relay/frame_relay.h"
#include "omnirelay/http/http_server.h"
#include "omnirelay/leadership/manager.h"
#include "omnirelay/mesh/grpc_gossip.h"
#include "omnirelay/mesh/membership.h"
#include "omnirelay/mesh/peer_feed.h"
#include "omnirelay/middleware/middleware.h"
#include "omnirelay/node/control_service.h"
#include "omnirelay/peers/health_tracker.h"
#include "omnirelay/resourcelease/diagnostics.h"
#include "omnirelay/resourcelease/queue.h"
#include "omnirelay/shards/map_store.h"
#include "omnirelay/shards/router.h"
#include "omnirelay/tls/tls.h"
#include "omnirelay/transport/grpc_transport.h"
#include "omnirelay/transport/http_transport.h"

namespace omnirelay::replication {
class SqliteReplicator;
class HubService;
}  // namespace omnirelay::replication

namespace omnirelay::node {

class Node {
 public:
  // Validates cross-references (routes, chooser names) and builds outbounds.
  static absl::StatusOr<std::unique_ptr<Node>> Create(config::NodeConfig config);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Adds a procedure (before Start).
  absl::Status Register(dispatcher::Procedure procedure);

  absl::Status Start();
  void Drain();
  bool WaitIdle(std::chrono::milliseconds timeout);
  void Stop();

  // {"name","pid","grpc","http","admin","gateway"} with bound addresses.
  nlohmann::json ReadyInfo() const;
  nlohmann::json Introspect() const;
  // (ready, reasons)
  std::pair<bool, std::vector<std::string>> Readiness() const;

  dispatcher::Dispatcher& dispatcher() { return *dispatcher_; }
  const config::NodeConfig& config() const { return config_; }
  std::shared_ptr<middleware::SpanRecorder> spans() const { return spans_; }
  std::shared_ptr<middleware::RateLimitMiddleware> rate_limiter() const { return rate_limiter_; }
  std::string grpc_address() const {
    return relay_ ? relay_->address() : grpc_ ? grpc_->address() : "";
  }
  std::string http_address() const { return http_ ? http_->address() : ""; }
  std::string admin_address() const { return admin_ ? admin_->address() : ""; }
  // ResourceLease queues by namespace (config `resourceLease`).
  const std::map<std::string, std::shared_ptr<resourcelease::Queue>>& resource_lease_queues()
      const {
    return queues_;
  }
  // Mesh membership (null unless omniRelay.mesh is configured; set by Start).
  std::shared_ptr<mesh::Membership> membership() const { return membership_; }
  // {"self": identity, "roleMap": {id: {roles, region, zone, labels, state}}}
  nlohmann::json RoleMap() const;
  // Leadership (config `leadership`), null without it.
  std::shared_ptr<leadership::LeadershipManager> leadership() const { return leadership_; }
  nlohmann::json LeadersJson() const;
  // Shard routing (config `shards`), null without it.
  std::shared_ptr<const shards::ShardRouter> shard_router() const { return shard_router_; }
  // Backpressure state of this node and of every member (docs/backpressure.md).
  std::shared_ptr<backpressure::BackpressureHub> backpressure_hub() const { return bp_hub_; }

 private:
  explicit Node(config::NodeConfig config);
  absl::Status Build();
  absl::StatusOr<dispatcher::MiddlewareChain> Chain(const std::vector<std::string>& names,
                                                    const config::OutboundConfig* outbound);
  void AddAdminRoutes(http::HttpServer& server);
  absl::Status BuildResourceLease();
  void AddResourceLeaseRoutes(http::HttpServer& server);
  // SSE of the hub's transitions (GET .../backpressure/stream?view=mesh).
  http::HttpResponse BackpressureMeshStream() const;
  nlohmann::json ResourceLeaseStats() const;
  absl::Status StartMesh();
  // nullopt when `request` may proceed, else the 401/403 answer.
  std::optional<http::HttpResponse> Deny(const http::HttpRequest& request, bool mutating) const;
  // Wraps a handler with Deny().
  http::HttpHandler Guard(http::HttpHandler handler, bool mutating);
  // Registers an admin route behind Deny() (POSTs are mutating).
  void AdminRoute(http::HttpServer& server, std::string method, std::string path,
                  http::HttpHandler handler);

  config::NodeConfig config_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<core::MetricsRegistry> metrics_;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::shared_ptr<middleware::SpanRecorder> spans_;
  std::shared_ptr<middleware::RateLimitMiddleware> rate_limiter_;
  std::shared_ptr<dispatcher::EchoStats> echo_stats_;
  std::map<std::string, std::shared_ptr<transport::PeerPool>> pools_;
  // Declared before grpc_ so the gRPC server that serves it goes first.
  std::unique_ptr<mesh::GossipService> gossip_service_;
  std::unique_ptr<ControlService> control_service_;  // omnirelay.mesh.v1.Control
  // The replication hub this node serves (config replicationHub) and its log;
  // before grpc_ for the same reason.
  std::shared_ptr<replication::SqliteReplicator> hub_log_;
  std::unique_ptr<replication::HubService> hub_service_;
  std::unique_ptr<transport::GrpcInbound> grpc_;
  std::unique_ptr<transport::HttpInbound> http_;
  std::unique_ptr<http::HttpServer> admin_;
  std::unique_ptr<gateway::Gateway> gateway_;  // gateway mode (config `gateway`)
  std::map<std::string, std::shared_ptr<resourcelease::Queue>> queues_;
  std::shared_ptr<resourcelease::BackpressureDiagnostics> backpressure_diag_;
  // ResourceLease replication (config resourceLease.replication), null without it.
  std::unique_ptr<class ResourceLeaseReplication> replication_;
  // Backpressure (docs/backpressure.md): local sources (queues) and members'
  // gossiped states; its listener flips rate_limiter_, the link gossips it.
  std::shared_ptr<backpressure::BackpressureHub> bp_hub_;
  std::shared_ptr<backpressure::MeshLink> bp_link_;
  std::shared_ptr<backpressure::ShardPressureSampler> bp_shards_;  // shards with a budget
  // Mesh (config `mesh`): the Gossip service's transport, the membership
  // and the health tracker it feeds.
  std::shared_ptr<mesh::GrpcGossipTransport> gossip_transport_;
  std::shared_ptr<mesh::Membership> membership_;
  std::shared_ptr<peers::PeerLeaseHealthTracker> mesh_health_;
  std::vector<core::ObservableHandle> mesh_metrics_;
  absl::Status StartLeadership();
  std::shared_ptr<coord::LeadershipStore> coord_store_;
  std::shared_ptr<leadership::LeadershipManager> leadership_;
  // Shards (config `shards`, docs/shards.md): the held maps, the router and
  // the shard routes' outbounds (Build), the store watcher and the leader's
  // reconcile loop (Start, after leadership; fed by the membership).
  absl::Status BuildShards();
  absl::Status StartShards();
  std::vector<shards::ShardMember> ShardMembers() const;
  std::shared_ptr<shards::ShardMapHolder> shard_holder_;
  std::shared_ptr<shards::ShardRouter> shard_router_;
  std::unique_ptr<shards::ShardMapWatcher> shard_watcher_;
  std::shared_ptr<shards::ShardManager> shard_manager_;
  // The members the shard router may route to (alive or suspect), as an
  // immutable set rebuilt on every membership event: the data path copies
  // one shared_ptr under the mutex and looks up without allocating.
  void RefreshRoutable();
  mutable std::mutex routable_mu_;
  std::shared_ptr<const std::set<std::string, std::less<>>> routable_ids_;
  std::optional<tls::TlsOptions> tls_;  // from omniRelay.tls
  std::string admin_token_;             // from omniRelay.admin.tokenFile
  // The HTTP/2 frame relay: when any route takes the fast path it owns the
  // configured gRPC address and grpc_ listens on loopback behind it.
  std::vector<h2relay::FrameRoute> frame_routes_;
  std::unique_ptr<h2relay::FrameRelay> relay_;
  core::TimePoint started_at_{};
  bool started_ = false;
  bool stopped_ = false;
  // Outbounds whose peers come from membership (`mesh:` and `leader:`;
  // docs/mesh.md "Outbounds from membership"): fed by StartMesh.
  struct MembershipOutbound {
    std::string name;
    std::string transport;  // which advertised endpoint to dial
    mesh::MemberSelector selector;
    std::shared_ptr<transport::PeerPool> pool;
  };
  std::vector<MembershipOutbound> membership_outbounds_;
  // Leader outbounds' chooser reads it; the LeadershipManager writes it.
  std::shared_ptr<leadership::LeaderDirectory> leader_directory_ =
      std::make_shared<leadership::LeaderDirectory>();
  std::vector<std::string> leader_scopes_;  // scopes leader outbounds target
  void RecordLeadershipSpan(const leadership::LeadershipChange& change);
  // Shards (docs/shards.md): the Rebalance / SetShardBudget calls shared by
  // the admin endpoints and omnirelay.mesh.v1.Control, and the change spans.
  core::StatusOr<nlohmann::json> RebalanceShard(const std::string& ns, std::uint32_t shard,
                                                const std::string& to, core::Duration timeout);
  core::StatusOr<nlohmann::json> SetShardBudget(const std::string& ns,
                                                std::optional<std::uint32_t> shard, double qps);
  void RecordShardSpan(std::string name, core::TimePoint at,
                       std::vector<std::pair<std::string, std::string>> attributes);
};

}  // namespace omnirelay::node
