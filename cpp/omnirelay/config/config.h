#pragma once
// Node configuration: the `omniRelay` section of a JSON or YAML file (the
// shape of seed 000's appsettings), then environment overrides
// (OMNIRELAY__A__B=value -> omniRelay.a.b, keys matched case-insensitively),
// then `--set key=value` overrides (key with or without the `omniRelay.`
// prefix; the value is parsed as JSON when it parses, else taken as a string).
//
// Validation rejects unknown keys and bad values with the offending key's
// full path, e.g.
//   omniRelay.outbounds.analytics.peerChooser: unknown chooser 'fewest' (known: ...)
// All problems are reported at once, one per line, in an InvalidArgument.
// Field reference with defaults: docs/configuration.md.
// Thread-safety: pure functions over values.
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/status.h"

namespace omnirelay::config {

struct InboundConfig {
  std::string address;  // "host:port"; port 0 = any free port
  int threads = 2;
  bool https_url = false;  // given as an https:// url: needs omniRelay.tls
  // HTTP only: what a client may send (http::HttpLimits; 400/413/431 and
  // slowloris timeouts, docs/configuration.md).
  int max_header_bytes = 16 * 1024;
  int max_body_bytes = 16 * 1024 * 1024;
  core::Duration header_timeout = std::chrono::seconds(10);
  core::Duration body_timeout = std::chrono::seconds(30);
  // gRPC only: streaming calls running at once (each holds one pool thread);
  // beyond it new streams get RESOURCE_EXHAUSTED.
  int max_streams = 64;
};

struct CircuitBreakerConfig {
  bool enabled = true;
  int consecutive_failures = 5;
  core::Duration open_delay = std::chrono::seconds(1);
};

struct RetryConfig {
  bool enabled = false;
  int max_attempts = 3;
  core::Duration initial_backoff = std::chrono::milliseconds(10);
  core::Duration max_backoff = std::chrono::milliseconds(1000);
  double multiplier = 2.0;
  double jitter = 0.2;
  double budget_ratio = 0.2;
  double budget_max = 10;
  // Only idempotent calls are retried: procedures listed here ("Method",
  // "service/Method", "*") or calls carrying `rpc-idempotent: true`.
  std::vector<std::string> idempotent_procedures;
  // Retry a backend's own RESOURCE_EXHAUSTED too (default: only our pool's).
  bool retry_resource_exhausted = false;
};

// Peers taken from mesh membership instead of static endpoints (issue 10,
// docs/mesh.md): every alive member matching all the given fields. Empty
// fields match everything; `labels` must all be present with equal values.
struct MeshSelectorConfig {
  std::string role;
  std::string region;
  std::string zone;
  std::map<std::string, std::string> labels;
};

// An outbound that targets "the current leader of scope X" (issue 11,
// docs/leadership.md "Leader-aware routing"): its peers are the alive mesh
// members (narrowed by `mesh` when given), its chooser picks the one the
// leadership directory names. Needs omniRelay.mesh and omniRelay.leadership.
struct LeaderTargetConfig {
  std::string scope;  // global | region/<name> | shard/<namespace>/<id>
};

// Geo-aware routing for one outbound (docs/peers.md "geo"): the outbound's
// chooser becomes the geo chooser, preferring peers in `region` and falling
// back to the other regions when the local ones degrade.
struct GeoRoutingConfig {
  std::string region;                   // empty = omniRelay.mesh.identity.region
  double latency_threshold_ms = 250;    // 0 disables the latency rule
  std::string latency_signal = "ewma";  // ewma | p50 | p90 | p99
  double failure_rate_threshold = 0.5;  // within [0, 1]; 1 disables the failure rule
  int min_samples = 10;
  core::Duration hold = std::chrono::seconds(10);  // `holdMs` / `returnAfter`
  core::Duration evaluate_every = std::chrono::milliseconds(100);
  int probe_every = 20;  // 0 = no probes while in fallback
  std::string inner_chooser = "fewest-pending";
};

struct OutboundConfig {
  std::string name;
  std::string transport = "grpc";  // grpc | http
  std::string service;
  std::string procedure;
  std::vector<std::string> endpoints;
  std::optional<MeshSelectorConfig> mesh;    // `mesh:` instead of `endpoints:`
  std::optional<LeaderTargetConfig> leader;  // `leader:` (optionally with `mesh:`)
  std::string peer_chooser = "fewest-pending";
  std::optional<GeoRoutingConfig> geo;  // `geo:` (replaces peerChooser)
  int max_in_flight_per_peer = 0;       // 0 = unlimited
  CircuitBreakerConfig circuit_breaker;
  RetryConfig retry;
  int threads = 1;
};

struct RouteConfig {
  std::string prefix;  // "/pkg.Service/" or "pkg.Service/Method"; "" = everything
  std::string outbound;
  std::string kind = "unary";
  // Which forwarding path serves the route (docs/dataplane.md "Fast path"):
  // "auto" (the HTTP/2 frame relay when the route's middleware allows it,
  // else grpc++), "frame" (the frame relay; an error when not allowed),
  // "grpc" (always the grpc++ generic path).
  std::string data_path = "auto";
};

struct RateLimitProfileConfig {
  int max_concurrency = 0;
  double tokens_per_second = 0;
  double burst = 0;
};

struct MiddlewareConfig {
  std::vector<std::string> inbound = {"recovery", "tracing",   "metrics",
                                      "logging",  "principal", "deadline"};
  std::vector<std::string> outbound = {"tracing", "metrics", "deadline"};
  std::optional<RateLimitProfileConfig> rate_limit;  // adds "rate-limit" to the inbound chain
  RateLimitProfileConfig backpressure{.max_concurrency = 1};
};

struct EchoConfig {
  bool enabled = false;
  std::string instance = "echo";
  int max_concurrency = 0;
  core::Duration latency{0};
  // Further "service/Method" names the unary echo answers under, so an echo
  // node can stand in for a real backend (`trace.Analytics/Process`).
  std::vector<std::string> procedures;
  // Execution journal file (dispatcher::EchoOptions::journal); "" = none.
  std::string journal;
};

// Gateway mode (issue 6, docs/session-gateway.md "Gateway mode"): a gRPC
// listener that forwards calls byte for byte to clusters chosen by method
// prefix, with per-route JWT verification and sticky-with-occupancy routing.
struct GatewayClusterConfig {
  std::string name;
  std::vector<std::string> endpoints;  // static members ("host:port"), or
  std::string registry;                // the HTTP instance registry "host:port"
  bool registry_tls = false;           // registry given as https:// (TLS)
  // Upstream calls use TLS (node `tls` files as the client identity): set by
  // https:// endpoints or `tls: true` (registry clusters). Never plaintext
  // for an https:// endpoint.
  bool tls = false;
  std::string role;  // registry role filter ("" = every role)
  core::Duration refresh_interval = std::chrono::seconds(1);
  // The instances are peer-kit peers (issue 15, docs/session-gateway.md
  // "Instances as peers"): sessions one instance holds (sticky routes; 0 =
  // unlimited), concurrent calls per instance (0 = no cap), and the
  // per-instance breaker.
  int occupancy = 1;
  int max_in_flight_per_instance = 0;
  CircuitBreakerConfig circuit_breaker;
};

struct GatewayRouteConfig {
  std::string prefix;  // matched against "/pkg.Service/Method"
  std::string cluster;
  std::string authorization = "none";    // none | required (JWT, auth::VerifyRequest)
  std::string balancer = "round-robin";  // round-robin | sticky
  std::string sticky_header = "session-id";
  // Full names of server-streaming methods ("/pkg.Service/Method", under
  // `prefix`) whose live streams move to another instance when theirs fails at
  // the transport level: the gateway replays the request there (issue 16).
  std::vector<std::string> transfer_streams;
  // auto | frame | grpc (docs/session-gateway.md "Data path"): auto and frame
  // forward through the HTTP/2 frame relay (admission and the sticky pick on
  // the HEADERS), except the transferStreams methods, which stay on grpc++.
  std::string data_path = "auto";
};

struct GatewayDefaultRouteConfig {
  std::string error = "UNIMPLEMENTED";  // gRPC code name, when `cluster` is empty
  std::string cluster;                  // forward unmatched calls there (round-robin)
};

struct GatewayConfig {
  std::string address;  // "host:port" of the gateway's gRPC listener
  std::string jwt_secret_file;
  // Create the secret file with a random key when it does not exist (the
  // first process of a fresh stack); otherwise a missing file is an error.
  bool jwt_create_if_missing = false;
  std::map<std::string, GatewayClusterConfig> clusters;
  std::vector<GatewayRouteConfig> routes;
  GatewayDefaultRouteConfig default_route;
  int max_attempts = 3;
  core::Duration attempt_timeout = std::chrono::seconds(2);
  int frame_threads = 2;  // event loops of the frame relay (frameThreads)
};

// Mesh membership (issue 10, docs/mesh.md): who this node is and how it
// gossips. Other subsystems (leadership, shards) read the identity from
// NodeConfig::mesh->identity; the mesh library turns `gossip` into its
// Options (profile defaults, then the overrides given here).
struct MeshIdentity {
  std::string node_id;                     // unique in the cluster; defaults to omniRelay.service
  std::string cluster_name = "omnirelay";  // nodes of another cluster are refused
  std::vector<std::string> roles;
  std::string region;
  std::string zone;
  std::map<std::string, std::string> labels;
  // host:port other members dial for gossip (the gRPC listener); empty = the
  // gRPC inbound's bound address, known after Start().
  std::string advertise_address;
  // Data-plane endpoints announced to members (`grpc`, `http` -> host:port),
  // dialled by their mesh-selected and leader outbounds; unset keys default
  // to this node's bound gRPC / HTTP inbound address (loopback for a
  // wildcard bind).
  std::map<std::string, std::string> advertise_endpoints;
};

// Overrides of the gossip profile; unset fields keep the profile's value.
struct MeshGossipConfig {
  std::string profile = "lan";  // lan | test
  std::optional<core::Duration> probe_interval;
  std::optional<core::Duration> probe_timeout;
  std::optional<int> indirect_checks;
  std::optional<int> suspicion_mult;
  std::optional<int> suspicion_max_timeout_mult;
  std::optional<int> retransmit_mult;
  std::optional<core::Duration> gossip_interval;
  std::optional<int> gossip_nodes;
  std::optional<core::Duration> gossip_to_the_dead;
  std::optional<core::Duration> push_pull_interval;
  std::optional<core::Duration> reconnect_interval;
  std::optional<core::Duration> dead_retention;
  std::optional<core::Duration> send_timeout;
};

struct MeshConfig {
  MeshIdentity identity;
  std::vector<std::string> seeds;  // host:port of members to join through
  // node id -> the host:port this node dials for that member instead of its
  // advertised address (address translation: fault proxies, NAT).
  std::map<std::string, std::string> peer_addresses;
  MeshGossipConfig gossip;
};

// ResourceLease queues (docs/resourcelease.md): `omniRelay.resourceLease`.
// Namespace "default" is served as `resourcelease::*`, every other one as
// `resourcelease.<namespace>::*`.
struct ResourceLeaseQueueConfig {
  int capacity = 100000;  // pending + active; 0 = unbounded
  core::Duration lease_duration = std::chrono::seconds(30);
  int max_attempts = 5;
  int high_watermark = 0;  // 0 = no backpressure
  int low_watermark = 0;
  core::Duration retry_after = std::chrono::seconds(1);
  int max_body_bytes = 1 << 20;
  int completed_retention = 100000;
};

// Replication of every queue mutation (docs/replication.md):
// `omniRelay.resourceLease.replication`.
struct ResourceLeaseDeterministicConfig {
  std::string kind;  // sqlite | file | memory | none; "" = matches the log's kind
  std::string path;  // "" = next to the log: <path>-effects.db | <path>-effects/
  std::string change_id = "resourcelease.{queue}";
  std::string effect_id_format = "{changeId}/seq/{n}";
};

struct ResourceLeaseReplicationConfig {
  std::string kind = "sqlite";  // sqlite | file | memory | grpc
  std::string path;             // sqlite: database file; file: segment directory
  std::string hub;              // grpc: host:port of the replication hub
  // Mutating procedures answer only after their events are durable (and the
  // SQLite log fsyncs each commit).
  bool durable_ack = true;
  std::string shard;  // tags events shard.id
  std::string table = "lease_events";
  int max_batch = 8192;
  // Backpressure while the log falls behind (a hub outage, a slow disk): once a
  // queue has this many published-but-not-durable events, enqueue answers
  // RESOURCE_EXHAUSTED / replication-backlog with a retry-after instead of
  // growing the buffer further. 0 = unbounded.
  int max_buffered = 0;
  ResourceLeaseDeterministicConfig deterministic;
};

struct ResourceLeaseConfig {
  core::Duration max_lease_wait = std::chrono::seconds(30);  // cap of a lease long poll
  // Flip the node's rate limiter (middleware.rateLimit / .backpressure) while
  // any queue is under backpressure.
  bool throttle_node = true;
  std::map<std::string, ResourceLeaseQueueConfig> namespaces;  // never empty once parsed
  std::optional<ResourceLeaseReplicationConfig> replication;
};

// Leadership (issue 11, docs/leadership.md): the coordination store this
// node uses and the scopes it may lead. The node id comes from
// omniRelay.mesh.identity.nodeId (or omniRelay.service without a mesh block).
struct LeadershipScopeConfig {
  std::string scope;  // global | region/<name> | shard/<namespace>/<id>
  int priority = 0;   // 0 = declared leader; larger waits longer
};

struct LeadershipConfig {
  std::string store = "sqlite";             // sqlite | etcd | memory
  std::string path = "omnirelay-coord.db";  // sqlite database file (shared per host)
  std::vector<std::string> endpoints;       // etcd host:port
  std::string profile = "default";          // default (10 s lease) | fast (2 s lease)
  core::Duration lease_ttl = std::chrono::seconds(10);
  core::Duration bootstrap_step = std::chrono::seconds(2);
  core::Duration failover_step = std::chrono::milliseconds(250);
  core::Duration max_clock_skew = std::chrono::milliseconds(250);
  core::Duration dial_timeout = std::chrono::seconds(3);
  std::vector<LeadershipScopeConfig> scopes;
  std::vector<std::string> observe;
  bool promote_regional_to_global = true;
  int promotion_priority = 1;
};

// Shard maps (issue 12, docs/shards.md): `omniRelay.shards`. Needs
// omniRelay.mesh (members own shards) and omniRelay.leadership (the scope's
// leader writes each namespace's map).
struct ShardNamespaceConfig {
  int shards = 64;                      // shard count, 1..1048576
  std::string strategy = "rendezvous";  // ring | rendezvous | locality
  int replicas = 1;                     // besides the owner, 0..16
  int virtual_nodes = 128;              // ring only, 1..4096
  double budget = 0;                    // per-shard QPS budget (0 = none)
  std::string leader_scope = "global";  // whose leader writes the map
  std::string owner_role;               // only members with this role own shards
  std::string region;                   // locality: preferred region
  std::string zone;                     // locality: preferred zone
  std::string service;                  // calls to this service are routed by shard key
  std::string local_service;            // ... and served on the owner by this service
  // Streaming procedures of `service` routed by shard key too (procedure
  // name -> server-stream | client-stream | duplex); the node adds every
  // streaming procedure `localService` registers here on its own.
  std::map<std::string, std::string> streams;
  // Geo stickiness of the shard route (docs/shards.md): the keys of
  // outbounds.X.geo; region defaults to the node's mesh region.
  std::optional<GeoRoutingConfig> geo;
  // The forwarding pool (`forward:`): per-peer cap, breaker, threads.
  int forward_max_in_flight_per_peer = 0;
  int forward_breaker_failures = 5;  // 0 disables the breaker
  core::Duration forward_breaker_open_delay = std::chrono::seconds(1);
  int forward_threads = 2;
};

struct ShardsConfig {
  core::Duration reconcile_interval = std::chrono::seconds(1);
  // An over-budget shard is not moved again automatically within this time.
  core::Duration rebalance_cooldown = std::chrono::seconds(30);
  std::map<std::string, ShardNamespaceConfig> namespaces;  // never empty once parsed
};

// TLS for every listener and for https:// outbounds (docs/security.md).
struct TlsConfig {
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  std::string client_certificate = "none";  // none | request | require (mTLS)
  core::Duration reload_interval = std::chrono::seconds(1);
};

// Admin listener and its control plane (docs/security.md).
struct AdminConfig {
  std::string address = "127.0.0.1:9901";  // loopback unless told otherwise
  // Bearer token for mutating endpoints (POST /omnirelay/control/*); without
  // it they accept only a verified client certificate (admin over mTLS).
  std::string token_file;
  std::string read_access = "open";  // open | token: GET endpoints other than probes
  bool tls = true;                   // serve TLS when omniRelay.tls is set
};

// Principal binding (middleware "principal").
struct PrincipalConfig {
  // Peers ("127.0.0.1", "10.0.0.0/8", "::1") whose x-client-principal /
  // x-client-cert-subject headers are trusted; from anyone else the headers
  // are ignored.
  std::vector<std::string> trusted_proxies;
  // Verifies bearer JWTs (HS256) before taking their `sub`; without it a
  // bearer token binds no principal.
  std::string jwt_secret_file;
};

// gRPC status code names ("OK", "CANCELLED", ..., "UNAUTHENTICATED").
const std::vector<std::string>& StatusCodeNames();

// Backpressure propagation (docs/backpressure.md), `omniRelay.backpressure`.
struct BackpressureConfig {
  bool propagate = true;       // publish this node's state in its gossip metadata
  bool follow_members = true;  // throttle while any member is under backpressure
  // retry-after hint added to RESOURCE_EXHAUSTED answers while throttling
  core::Duration retry_after = std::chrono::seconds(1);
  // Shards with a budget (shards.namespaces.<ns>.budget) are level sources:
  // high = budget QPS, low = budget x shardLowRatio, held at least shardMinHold.
  double shard_low_ratio = 0.8;
  core::Duration shard_min_hold = std::chrono::seconds(2);
  core::Duration sample_interval = std::chrono::milliseconds(500);
  // What a shard under backpressure does on the node serving it: "shard"
  // admits its calls up to the budget per second and refuses the rest
  // RESOURCE_EXHAUSTED with retry-after; "none" (default) only signals, so a
  // hot shard is moved by its leader without failing a call.
  std::string shard_throttle = "none";
};

struct NodeConfig {
  std::string service = "omnirelay";
  std::optional<InboundConfig> grpc;
  std::optional<InboundConfig> http;
  std::string admin_address = "127.0.0.1:9901";
  AdminConfig admin;  // admin.address mirrors admin_address
  std::optional<TlsConfig> tls;
  PrincipalConfig principal;
  std::map<std::string, OutboundConfig> outbounds;
  std::vector<RouteConfig> routes;
  MiddlewareConfig middleware;
  EchoConfig echo;
  std::optional<GatewayConfig> gateway;
  std::optional<MeshConfig> mesh;  // `omniRelay.mesh`: membership on (needs a gRPC inbound)
  std::optional<ResourceLeaseConfig> resource_lease;
  // The node serves the replication hub (omnirelay.replication.v1.Hub) on its
  // gRPC inbound, persisting to its own SQLite log: `omniRelay.replicationHub`.
  struct ReplicationHub {
    std::string path;  // the hub's SQLite log
  };
  std::optional<ReplicationHub> replication_hub;
  std::optional<LeadershipConfig> leadership;  // `omniRelay.leadership`
  std::optional<ShardsConfig> shards;          // `omniRelay.shards`
  BackpressureConfig backpressure;             // `omniRelay.backpressure`
  core::Duration drain_timeout = std::chrono::seconds(10);
};

// Known middleware and chooser names (validation and docs).
const std::vector<std::string>& MiddlewareNames();
std::vector<std::string> KnownChoosers();

// Reads a file (".yaml"/".yml" as YAML, everything else as JSON) into JSON.
absl::StatusOr<nlohmann::json> LoadFile(const std::string& path);
// YAML text -> JSON (scalars typed: int, float, bool, null, else string).
absl::StatusOr<nlohmann::json> YamlToJson(const std::string& text);

// Applies OMNIRELAY__* variables from `environ` (nullptr = the process's).
absl::Status ApplyEnvironment(nlohmann::json& root, char** environ_list = nullptr);
// Applies "key=value" overrides.
absl::Status ApplySets(nlohmann::json& root, const std::vector<std::string>& sets);

// Validates `root` (which must contain `omniRelay`) into a NodeConfig.
absl::StatusOr<NodeConfig> Parse(const nlohmann::json& root);

// Everything in order: file (optional), environment, sets, validation.
absl::StatusOr<NodeConfig> Load(const std::string& path, const std::vector<std::string>& sets,
                                bool use_environment = true);

// The effective configuration as JSON (introspection, `config validate`).
nlohmann::json ToJson(const NodeConfig& config);
// The `leadership` block of ToJson.
nlohmann::json LeadershipToJson(const LeadershipConfig& leadership);
// The `shards` block of ToJson.
nlohmann::json ShardsToJson(const ShardsConfig& shards);
// The `mesh` block of ToJson (durations as "...Ms" numbers).
nlohmann::json MeshToJson(const MeshConfig& mesh);

}  // namespace omnirelay::config
