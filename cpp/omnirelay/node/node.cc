#include "omnirelay/node/node.h"

#include <openssl/crypto.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "omnirelay/backpressure/signal_middleware.h"
#include "omnirelay/core/address.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/mesh/mesh_metrics.h"
#include "omnirelay/mesh/peer_feed.h"
#include "omnirelay/node/replication_wiring.h"
#include "omnirelay/peers/geo_chooser.h"
#include "omnirelay/replication/hub.h"
#include "omnirelay/resourcelease/service.h"
#include "omnirelay/shards/shard_outbound.h"
#include "omnirelay/shards/strategy.h"
#include "omnirelay/tls/grpc_credentials.h"

namespace omnirelay::node {

Node::Node(config::NodeConfig config)
    : config_(std::move(config)),
      clock_(core::SystemClock::Shared()),
      metrics_(core::MetricsRegistry::Default()),
      dispatcher_(std::make_shared<dispatcher::Dispatcher>(config_.service)),
      spans_(std::make_shared<middleware::SpanRecorder>()) {}

Node::~Node() { Stop(); }

namespace {

// A config-named file's trimmed contents; errors name the key path.
absl::StatusOr<std::string> ReadKeyFile(const std::string& key, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(key + ": cannot read '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  std::string value = text.str();
  while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) value.pop_back();
  if (value.empty()) return absl::InvalidArgumentError(key + ": '" + path + "' is empty");
  return value;
}

absl::Status WithKeyPath(const std::string& key, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), key + "." + std::string(status.message()));
}

bool TokenMatches(std::string_view given, const std::string& expected) {
  return !expected.empty() && given.size() == expected.size() &&
         CRYPTO_memcmp(given.data(), expected.data(), given.size()) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Node>> Node::Create(config::NodeConfig config) {
  std::unique_ptr<Node> node(new Node(std::move(config)));
  if (auto status = node->Build(); !status.ok()) return status;
  return node;
}

absl::StatusOr<dispatcher::MiddlewareChain> Node::Chain(const std::vector<std::string>& names,
                                                        const config::OutboundConfig* outbound) {
  dispatcher::MiddlewareChain chain;
  bool retry_added = false;
  auto add_retry = [&] {
    if (retry_added || outbound == nullptr || !outbound->retry.enabled) return;
    const auto& r = outbound->retry;
    chain.push_back(std::make_shared<middleware::RetryMiddleware>(
        middleware::RetryOptions{.max_attempts = r.max_attempts,
                                 .initial_backoff = r.initial_backoff,
                                 .max_backoff = r.max_backoff,
                                 .multiplier = r.multiplier,
                                 .jitter = r.jitter,
                                 .budget_ratio = r.budget_ratio,
                                 .budget_max = r.budget_max,
                                 .budget_initial = r.budget_max,
                                 .idempotent_procedures = r.idempotent_procedures,
                                 .retry_resource_exhausted = r.retry_resource_exhausted},
        clock_, metrics_));
    retry_added = true;
  };
  for (const auto& name : names) {
    if (name == "recovery") {
      chain.push_back(std::make_shared<middleware::RecoveryMiddleware>());
    } else if (name == "tracing") {
      chain.push_back(std::make_shared<middleware::TracingMiddleware>(spans_, clock_));
    } else if (name == "metrics") {
      chain.push_back(std::make_shared<middleware::RpcMetricsMiddleware>(metrics_, clock_));
    } else if (name == "logging") {
      chain.push_back(std::make_shared<middleware::LoggingMiddleware>());
    } else if (name == "principal") {
      auto principal = middleware::PrincipalMiddleware::Create(
          {.trusted_proxies = config_.principal.trusted_proxies,
           .jwt_secret_file = config_.principal.jwt_secret_file});
      if (!principal.ok()) return principal.status();
      chain.push_back(*principal);
    } else if (name == "deadline") {
      add_retry();  // retry sits outside the per-attempt deadline check
      chain.push_back(std::make_shared<middleware::DeadlineMiddleware>(clock_));
    } else if (name == "retry") {
      add_retry();
    } else if (name == "rate-limit") {
      if (rate_limiter_) chain.push_back(rate_limiter_);
    } else {
      return absl::InvalidArgumentError("unknown middleware '" + name + "'");
    }
  }
  add_retry();
  return chain;
}

namespace {
// Middleware the frame relay provides itself (it never sees a message, so
// only header-level work qualifies): `deadline` is the relay's own timer and
// grpc-timeout, `recovery` has nothing to catch.
bool FramePathRunsMiddleware(const std::string& name) {
  return name == "deadline" || name == "recovery";
}

// Why a route cannot take the frame relay, or "" when it can.
std::string FramePathBlocker(const config::NodeConfig& c, const config::RouteConfig& r) {
  auto o = c.outbounds.find(r.outbound);
  if (o == c.outbounds.end()) return "unknown outbound";
  if (o->second.transport != "grpc") return "outbound transport is " + o->second.transport;
  // The relay indexes its upstream connections by a static peer list.
  if (o->second.mesh || o->second.leader) {
    return "peers from membership (mesh/leader outbounds) take the grpc++ path";
  }
  // The relay speaks cleartext HTTP/2 on both sides: a TLS node or a TLS
  // upstream keeps the grpc++ path (never a silent downgrade, docs/security.md).
  if (c.tls) return "the frame relay does not terminate TLS (omniRelay.tls is set)";
  for (const auto& endpoint : o->second.endpoints) {
    auto hp = core::ParseHostPort(endpoint);
    if (hp.ok() && hp->tls()) return "outbound endpoint '" + endpoint + "' uses TLS";
  }
  if (o->second.retry.enabled) return "outbound retry replays the message";
  if (r.kind == "oneway") return "oneway calls are acknowledged on arrival by the grpc++ path";
  if (c.middleware.rate_limit) return "inbound middleware 'rate-limit' needs the grpc++ path";
  for (const auto& m : c.middleware.inbound) {
    if (!FramePathRunsMiddleware(m)) return "inbound middleware '" + m + "' needs the grpc++ path";
  }
  for (const auto& m : c.middleware.outbound) {
    if (!FramePathRunsMiddleware(m)) return "outbound middleware '" + m + "' needs the grpc++ path";
  }
  return "";
}
}  // namespace

absl::Status Node::Build() {
  if (!config_.middleware.rate_limit && config_.resource_lease &&
      config_.resource_lease->throttle_node) {
    // ResourceLease backpressure throttles the node: without a configured
    // normal profile the node runs unlimited and switches to the
    // `middleware.backpressure` profile while a queue is under backpressure.
    config_.middleware.rate_limit = config::RateLimitProfileConfig{};
  }
  if (config_.tls) {
    const auto& t = *config_.tls;
    tls_ = tls::TlsOptions{
        .cert_file = t.cert_file,
        .key_file = t.key_file,
        .ca_file = t.ca_file,
        .client_auth = tls::ParseClientAuth(t.client_certificate).value_or(tls::ClientAuth::kNone),
        .reload_interval = t.reload_interval};
    if (auto s = tls::Validate(*tls_, /*need_identity=*/true); !s.ok()) {
      return WithKeyPath("omniRelay.tls", s);
    }
  }
  if (!config_.admin.token_file.empty()) {
    auto token = ReadKeyFile("omniRelay.admin.tokenFile", config_.admin.token_file);
    if (!token.ok()) return token.status();
    admin_token_ = *token;
  }
  if (config_.middleware.rate_limit) {
    const auto& n = *config_.middleware.rate_limit;
    const auto& b = config_.middleware.backpressure;
    rate_limiter_ = std::make_shared<middleware::RateLimitMiddleware>(
        middleware::RateLimitOptions{
            .normal = {n.max_concurrency, n.tokens_per_second, n.burst},
            .backpressure = {b.max_concurrency, b.tokens_per_second, b.burst}},
        clock_, metrics_);
  }
  // Backpressure (docs/backpressure.md): the hub decides the limiter's mode:
  // this node's own saturation (with resourceLease.throttleNode) or any
  // member's gossiped saturation (with backpressure.followMembers).
  bp_hub_ = std::make_shared<backpressure::BackpressureHub>(
      config_.mesh ? config_.mesh->identity.node_id : config_.service, clock_, metrics_);
  bp_hub_->AddListener([this](const backpressure::HubState& state) {
    const bool throttle_local = config_.resource_lease && config_.resource_lease->throttle_node;
    const bool on =
        (throttle_local && state.local) || (config_.backpressure.follow_members && state.remote);
    if (rate_limiter_) rate_limiter_->SetBackpressure(on);
    core::Log(core::LogLevel::kInfo, "backpressure",
              {{"node", bp_hub_->node_id()},
               {"local", state.local},
               {"remote", state.remote},
               {"node.rateLimit", rate_limiter_ ? (on ? "backpressure" : "normal") : "none"}});
  });
  bp_link_ = backpressure::MeshLink::Create(bp_hub_, clock_, config_.backpressure.propagate);
  std::vector<std::string> inbound_names = config_.middleware.inbound;
  if (rate_limiter_ &&
      std::find(inbound_names.begin(), inbound_names.end(), "rate-limit") == inbound_names.end()) {
    inbound_names.push_back("rate-limit");
  }
  auto inbound = Chain(inbound_names, nullptr);
  if (!inbound.ok()) return inbound.status();
  // First in the chain: it sees the rate limiter's refusals too.
  inbound->insert(inbound->begin(), std::make_shared<backpressure::BackpressureSignalMiddleware>(
                                        bp_hub_, config_.backpressure.retry_after));
  dispatcher_->UseInboundMiddleware(std::move(*inbound));
  auto outbound_chain = Chain(config_.middleware.outbound, nullptr);
  if (!outbound_chain.ok()) return outbound_chain.status();
  dispatcher_->UseOutboundMiddleware(*outbound_chain);

  for (const auto& [name, o] : config_.outbounds) {
    transport::PeerPoolOptions peers{
        .chooser = o.peer_chooser,
        .max_in_flight_per_peer = o.max_in_flight_per_peer,
        .breaker_consecutive_failures =
            o.circuit_breaker.enabled ? o.circuit_breaker.consecutive_failures : 0,
        .breaker_open_delay = o.circuit_breaker.open_delay,
        .service = o.service,
        .transport = o.transport};
    if (o.leader) {
      // "The current leader of scope X": every member is a peer, the chooser
      // picks the one the directory names, and "no leader reachable" is
      // UNAVAILABLE (retryable) rather than pool exhaustion.
      auto directory = leader_directory_;
      const std::string scope = o.leader->scope;
      peers.chooser_factory = [directory, scope]() -> std::unique_ptr<peers::PeerChooser> {
        return std::make_unique<leadership::LeaderChooser>(directory, scope);
      };
      peers.exhaustion_is_unavailable = true;
      leader_scopes_.push_back(scope);
    }
    if (o.geo) {
      // Geo-aware routing (docs/peers.md "geo"): peers' regions come from
      // membership metadata (StartMesh's feed) or are unknown (= remote).
      peers::GeoChooserOptions geo;
      geo.region = !o.geo->region.empty() ? o.geo->region
                   : config_.mesh         ? config_.mesh->identity.region
                                          : std::string();
      geo.latency_threshold_ms = o.geo->latency_threshold_ms;
      geo.latency_signal = *peers::ParseGeoLatencySignal(o.geo->latency_signal);
      geo.failure_rate_threshold = o.geo->failure_rate_threshold;
      geo.min_samples = static_cast<std::uint64_t>(o.geo->min_samples);
      geo.hold = o.geo->hold;
      geo.evaluate_every = o.geo->evaluate_every;
      geo.probe_every = static_cast<std::uint32_t>(o.geo->probe_every);
      geo.inner = o.geo->inner_chooser;
      geo.tags = {{"rpc.service", o.service}, {"outbound", name}};
      // Validate now (config validation already did; this keeps the error
      // path explicit should the two ever disagree).
      auto probe = peers::GeoChooser::Create(geo, clock_, nullptr);
      if (!probe.ok()) {
        return absl::InvalidArgumentError("omniRelay.outbounds." + name +
                                          ".geo: " + std::string(probe.status().message()));
      }
      peers.chooser_factory = [geo, clock = clock_,
                               metrics = metrics_]() -> std::unique_ptr<peers::PeerChooser> {
        auto made = peers::GeoChooser::Create(geo, clock, metrics);
        return made.ok() ? *std::move(made) : nullptr;
      };
    }
    // Mesh and leader outbounds start empty; StartMesh feeds them.
    auto coordinated = transport::MakeCoordinatorPeerPool(
        o.mesh || o.leader ? std::vector<std::string>{} : o.endpoints, peers, clock_, metrics_);
    if (!coordinated.ok()) {
      return absl::InvalidArgumentError("omniRelay.outbounds." + name + ": " +
                                        std::string(coordinated.status().message()));
    }
    std::shared_ptr<transport::PeerPool> pool = *coordinated;
    pools_[name] = pool;
    if (o.mesh || o.leader) {
      mesh::MemberSelector selector;
      if (o.mesh) selector = {o.mesh->role, o.mesh->region, o.mesh->zone, o.mesh->labels};
      membership_outbounds_.push_back({name, o.transport, std::move(selector), pool});
    }
    if (o.leader) {
      std::weak_ptr<transport::PeerPool> weak = pool;
      leader_directory_->AddListener(
          [weak, scope = o.leader->scope](const std::string& changed,
                                          const std::optional<leadership::LeaderInfo>&) {
            if (changed != scope) return;
            if (auto strong = weak.lock()) strong->Wake();  // waiting calls re-pick
          });
    }
    std::shared_ptr<dispatcher::Outbound> outbound;
    if (o.transport == "grpc") {
      outbound = std::make_shared<transport::GrpcOutbound>(
          transport::GrpcOutboundOptions{.name = name,
                                         .service = o.service,
                                         .procedure = o.procedure,
                                         .endpoints = o.endpoints,
                                         .peers = peers,
                                         .threads = o.threads,
                                         .tls = tls_},
          pool, clock_);
    } else {
      outbound = std::make_shared<transport::HttpOutbound>(
          transport::HttpOutboundOptions{.name = name,
                                         .service = o.service,
                                         .procedure = o.procedure,
                                         .endpoints = o.endpoints,
                                         .peers = peers,
                                         .threads = std::max(4, o.threads),
                                         .tls = tls_},
          pool, clock_);
    }
    std::optional<dispatcher::MiddlewareChain> chain;
    if (o.retry.enabled) {
      auto c = Chain(config_.middleware.outbound, &o);
      if (!c.ok()) return c.status();
      chain = std::move(*c);
    }
    if (auto s = dispatcher_->AddOutbound(name, outbound, std::move(chain)); !s.ok()) return s;
  }
  for (size_t i = 0; i < config_.routes.size(); ++i) {
    const auto& r = config_.routes[i];
    auto kind = dispatcher::ParseProcedureKind(r.kind);
    if (!kind) return absl::InvalidArgumentError("route kind '" + r.kind + "'");
    if (auto s = dispatcher_->AddRoute({r.prefix, r.outbound, *kind}); !s.ok()) return s;
    // The fast path (docs/dataplane.md): per route, by `dataPath`.
    if (r.data_path == "grpc" || !config_.grpc) continue;
    const std::string blocker = FramePathBlocker(config_, r);
    if (!blocker.empty()) {
      if (r.data_path == "frame") {
        return absl::InvalidArgumentError("omniRelay.routes[" + std::to_string(i) +
                                          "].dataPath: 'frame' is not possible: " + blocker);
      }
      continue;
    }
    const auto& o = config_.outbounds.at(r.outbound);
    frame_routes_.push_back(h2relay::FrameRoute{.prefix = r.prefix,
                                                .outbound = r.outbound,
                                                .pool = pools_.at(r.outbound),
                                                .service = o.service,
                                                .procedure = o.procedure,
                                                .hook = nullptr});
  }
  if (config_.echo.enabled) {
    auto stats = dispatcher::RegisterEchoProcedures(
        *dispatcher_, {.instance = config_.echo.instance,
                       .max_concurrency = config_.echo.max_concurrency,
                       .latency = config_.echo.latency,
                       .procedures = config_.echo.procedures,
                       .journal = config_.echo.journal});
    if (!stats.ok()) return stats.status();
    echo_stats_ = *stats;
  }
  if (auto s = BuildResourceLease(); !s.ok()) return s;
  if (auto s = BuildShards(); !s.ok()) return s;
  if (shard_router_) {
    // Always sampled: a budget may come at run time (SetShardBudget) on a
    // namespace configured without one (shards without a budget cost a skip).
    {
      const auto& b = config_.backpressure;
      bp_shards_ = std::make_shared<backpressure::ShardPressureSampler>(
          shard_router_, bp_hub_, clock_,
          backpressure::ShardPressureOptions{.low_ratio = b.shard_low_ratio,
                                             .min_hold = b.shard_min_hold,
                                             .interval = b.sample_interval});
    }
  }
  return absl::OkStatus();
}

absl::Status Node::BuildResourceLease() {
  if (!config_.resource_lease) return absl::OkStatus();
  const auto& rl = *config_.resource_lease;
  backpressure_diag_ = std::make_shared<resourcelease::BackpressureDiagnostics>();
  if (rl.replication) {
    auto replication = ResourceLeaseReplication::Create(*rl.replication, clock_, metrics_, tls_);
    if (!replication.ok()) return replication.status();
    replication_ = std::move(*replication);
  }
  for (const auto& [name, q] : rl.namespaces) {
    resourcelease::QueueOptions options{
        .name = name,
        .capacity = static_cast<size_t>(q.capacity),
        .lease_duration = q.lease_duration,
        .max_attempts = q.max_attempts,
        .high_watermark = static_cast<size_t>(q.high_watermark),
        .low_watermark = static_cast<size_t>(q.low_watermark),
        .retry_after = q.retry_after,
        .max_body_bytes = static_cast<size_t>(q.max_body_bytes),
        .completed_retention = static_cast<size_t>(q.completed_retention)};
    auto queue = resourcelease::Queue::Create(options, clock_, metrics_);
    if (!queue.ok()) {
      return absl::InvalidArgumentError("omniRelay.resourceLease.namespaces." + name + ": " +
                                        std::string(queue.status().message()));
    }
    backpressure_diag_->Track(options, clock_->Now());
    (*queue)->AddBackpressureListener(backpressure_diag_->Listener());
    // Runs under the queue's lock (the queue does the watermark hysteresis);
    // the hub orders flips from several queues.
    const std::string source = "resourcelease/" + name;
    bp_hub_->SetSource(source, false,
                       {{"highWatermark", q.high_watermark}, {"lowWatermark", q.low_watermark}});
    (*queue)->AddBackpressureListener(
        [hub = bp_hub_, source](const resourcelease::BackpressureSignal& signal) {
          hub->SetSource(source, signal.active, {{"pending", signal.pending}});
          core::Log(core::LogLevel::kInfo, "resourcelease backpressure",
                    {{"namespace", signal.queue},
                     {"state", signal.active ? "backpressure" : "normal"},
                     {"pending", signal.pending}});
        });
    // Replays the log into the fresh queue before it serves (docs/replication.md).
    if (replication_) {
      if (auto s = replication_->Attach(**queue); !s.ok()) return s;
    }
    if (auto s = resourcelease::RegisterProcedures(
            *dispatcher_, *queue,
            {.max_lease_wait = rl.max_lease_wait,
             .await_durable = replication_ ? replication_->AwaitDurable(name) : nullptr,
             .admit_enqueue = replication_ ? replication_->AdmitEnqueue(name) : nullptr},
            clock_);
        !s.ok()) {
      return s;
    }
    queues_[name] = *queue;
  }
  return absl::OkStatus();
}

nlohmann::json Node::ResourceLeaseStats() const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, queue] : queues_) {
    const auto s = queue->Stats();
    const auto& o = queue->options();
    out[name] = {{"service", resourcelease::ServiceName(name)},
                 {"pending", s.pending},
                 {"active", s.active},
                 {"deadLetter", s.dead_letter},
                 {"waiters", s.waiters},
                 {"backpressure", s.backpressure},
                 {"drained", s.drained},
                 {"enqueued", s.enqueued},
                 {"completed", s.completed},
                 {"failed", s.failed},
                 {"expired", s.expired},
                 {"deadLettered", s.dead_lettered},
                 {"backpressureTransitions", s.backpressure_transitions},
                 {"sequence", s.sequence},
                 {"capacity", o.capacity},
                 {"highWatermark", o.high_watermark},
                 {"lowWatermark", o.low_watermark},
                 {"leaseDurationMs",
                  std::chrono::duration_cast<std::chrono::milliseconds>(o.lease_duration).count()},
                 {"maxAttempts", o.max_attempts}};
  }
  return out;
}

http::HttpResponse Node::BackpressureMeshStream() const {
  http::HttpResponse response;
  response.content_type = "text/event-stream";
  response.headers.Set("cache-control", "no-cache");
  response.stream = [hub = bp_hub_](const std::function<bool(std::string_view)>& write) {
    // The whole state first, then each transition (local sources and
    // members); a comment line every 2 s notices clients that went away.
    std::uint64_t cursor = hub->Cursor();
    if (!write("event: snapshot\ndata: " + hub->ToJson().dump() + "\n\n")) return;
    while (!hub->closed()) {
      auto next = hub->Next(cursor, std::chrono::seconds(2));
      if (!next) {
        if (!write(": keepalive\n\n")) return;
        continue;
      }
      if (!write("event: transition\ndata: " + next->dump() + "\n\n")) return;
    }
  };
  return response;
}

void Node::AddResourceLeaseRoutes(http::HttpServer& server) {
  AdminRoute(server, "GET", "/omnirelay/control/backpressure", [this](const http::HttpRequest&) {
    nlohmann::json body = {
        {"namespaces",
         backpressure_diag_ ? backpressure_diag_->Latest() : nlohmann::json::object()},
        {"rateLimit", rate_limiter_ ? rate_limiter_->Snapshot() : nlohmann::json(nullptr)}};
    body.update(bp_hub_->ToJson());  // node, local, remote, throttling, sources, members
    return http::HttpResponse::Json(200, body.dump());
  });
  AdminRoute(server, "GET", "/omnirelay/control/backpressure/stream",
             [this](const http::HttpRequest& request) {
               if (!backpressure_diag_ || request.QueryParam("view").value_or("") == "mesh") {
                 return BackpressureMeshStream();
               }
               const std::string only = request.QueryParam("namespace").value_or("");
               http::HttpResponse response;
               response.content_type = "text/event-stream";
               response.headers.Set("cache-control", "no-cache");
               auto diag = backpressure_diag_;
               response.stream = [diag, only](const std::function<bool(std::string_view)>& write) {
                 // First the current state of every namespace, then each
                 // transition as it happens; a comment line every 2 s
                 // notices clients that went away.
                 std::uint64_t cursor = diag->Cursor();
                 const nlohmann::json latest = diag->Latest();  // items() must not outlive it
                 for (const auto& [name, state] : latest.items()) {
                   if (!only.empty() && name != only) continue;
                   if (!write("event: snapshot\ndata: " + state.dump() + "\n\n")) return;
                 }
                 while (!diag->closed()) {
                   auto next = diag->Next(cursor, std::chrono::seconds(2));
                   if (!next) {
                     if (!write(": keepalive\n\n")) return;
                     continue;
                   }
                   if (!only.empty() && (*next)["namespace"] != only) continue;
                   if (!write("event: transition\ndata: " + next->dump() + "\n\n")) return;
                 }
               };
               return response;
             });
  AdminRoute(server, "GET", "/omnirelay/control/replication/checkpoint",
             [this](const http::HttpRequest&) {
               if (!replication_) {
                 return http::HttpResponse::Json(
                     404, R"({"error":"resourceLease.replication is not configured"})");
               }
               return http::HttpResponse::Json(200, replication_->Checkpoints().dump());
             });
  AdminRoute(server, "GET", "/omnirelay/control/resourcelease", [this](const http::HttpRequest&) {
    return http::HttpResponse::Json(200,
                                    nlohmann::json{{"namespaces", ResourceLeaseStats()}}.dump());
  });
  AdminRoute(server, "GET", "/omnirelay/control/resourcelease/health",
             [this](const http::HttpRequest&) {
               // healthy: every queue serves; degraded: some queue under backpressure
               // (still serving leases); unhealthy (503): a queue is drained.
               std::string status = "healthy";
               std::vector<std::string> reasons;
               for (const auto& [name, queue] : queues_) {
                 const auto s = queue->Stats();
                 if (s.drained) {
                   status = "unhealthy";
                   reasons.push_back("namespace '" + name + "' is drained");
                 } else if (s.backpressure) {
                   if (status == "healthy") status = "degraded";
                   reasons.push_back("namespace '" + name + "' is under backpressure");
                 }
               }
               nlohmann::json body = {
                   {"status", status}, {"reasons", reasons}, {"namespaces", ResourceLeaseStats()}};
               return http::HttpResponse::Json(status == "unhealthy" ? 503 : 200, body.dump());
             });
}

absl::Status Node::Register(dispatcher::Procedure procedure) {
  if (started_) return absl::FailedPreconditionError("node already started");
  return dispatcher_->Register(std::move(procedure));
}

absl::Status Node::Start() {
  if (started_) return absl::OkStatus();
  if (auto s = dispatcher_->Start(); !s.ok()) return s;
  if (config_.mesh) gossip_service_ = std::make_unique<mesh::GossipService>();
  if (config_.grpc) {
    // With frame routes the relay takes the configured address and passes
    // everything else (the mesh's Gossip service included) to the grpc++
    // inbound on loopback.
    transport::GrpcInboundOptions grpc_options{
        .address = frame_routes_.empty() ? config_.grpc->address : "127.0.0.1:0",
        .threads = config_.grpc->threads,
        .tls = tls_,
        .max_streams = config_.grpc->max_streams};
    if (gossip_service_) grpc_options.services.push_back(gossip_service_->service());
    if (config_.leadership) {
      // Promote over gRPC, with the admin endpoint's authorization.
      control_service_ = std::make_unique<ControlService>(
          ControlAuth{.token = admin_token_,
                      .mtls_clients = tls_ && tls_->client_auth != tls::ClientAuth::kNone});
      grpc_options.services.push_back(control_service_->service());
    }
    if (config_.replication_hub) {
      // The replication hub (docs/replication.md) on the same gRPC listener.
      auto log =
          replication::SqliteReplicator::Open({.path = config_.replication_hub->path}, "hub");
      if (!log.ok()) {
        return absl::Status(log.status().code(), "omniRelay.replicationHub.path: " +
                                                     std::string(log.status().message()));
      }
      hub_log_ = *log;
      hub_service_ = std::make_unique<replication::HubService>(hub_log_);
      grpc_options.services.push_back(hub_service_.get());
    }
    grpc_ = std::make_unique<transport::GrpcInbound>(grpc_options, dispatcher_);
    if (auto s = grpc_->Start(); !s.ok()) return s;
    if (!frame_routes_.empty()) {
      relay_ = std::make_unique<h2relay::FrameRelay>(
          h2relay::FrameRelayOptions{.address = config_.grpc->address,
                                     .threads = config_.grpc->threads,
                                     .routes = frame_routes_,
                                     .fallback = grpc_->address(),
                                     .dispatcher = dispatcher_,
                                     .clock = clock_});
      if (auto s = relay_->Start(); !s.ok()) return s;
    }
  }
  std::shared_ptr<tls::ContextSource> server_tls;
  if (tls_) {
    auto source = tls::ContextSource::Create(*tls_, tls::Role::kServer);
    if (!source.ok()) return WithKeyPath("omniRelay.tls", source.status());
    server_tls = *source;
  }
  if (config_.http) {
    http_ = std::make_unique<transport::HttpInbound>(
        transport::HttpInboundOptions{
            .address = config_.http->address,
            .threads = std::max(4, config_.http->threads),
            .tls = server_tls,
            .limits = {.max_header_bytes = static_cast<size_t>(config_.http->max_header_bytes),
                       .max_body_bytes = static_cast<size_t>(config_.http->max_body_bytes),
                       .header_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
                           config_.http->header_timeout),
                       .body_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
                           config_.http->body_timeout)}},
        dispatcher_);
    if (auto s = http_->Start(); !s.ok()) return s;
  }
  if (config_.gateway) {
    auto gateway = gateway::Gateway::Create(*config_.gateway, metrics_, tls_);
    if (!gateway.ok()) return gateway.status();
    gateway_ = std::move(*gateway);
    if (auto s = gateway_->Start(); !s.ok()) return s;
  }
  if (auto s = StartLeadership(); !s.ok()) return s;
  if (control_service_ && leadership_) control_service_->Attach(leadership_);
  if (control_service_ && shard_router_) {
    control_service_->AttachShards(
        {.rebalance =
             [this](const std::string& ns, std::uint32_t shard, const std::string& to,
                    core::Duration timeout) { return RebalanceShard(ns, shard, to, timeout); },
         .set_budget = [this](const std::string& ns, std::optional<std::uint32_t> shard,
                              double qps) { return SetShardBudget(ns, shard, qps); }});
  }
  auto hp = transport::ParseHostPort(config_.admin_address);
  if (!hp.ok()) return hp.status();
  // Backpressure SSE streams hold an admin worker each: give ResourceLease,
  // shard and mesh nodes (docs/backpressure.md) a few.
  admin_ = std::make_unique<http::HttpServer>(http::HttpServerOptions{
      .host = hp->host,
      .port = hp->port,
      .threads = config_.resource_lease || config_.shards || config_.mesh ? 6 : 1,
      .tls = config_.admin.tls ? server_tls : nullptr});
  if (auto s = StartShards(); !s.ok()) return s;
  if (bp_shards_) bp_shards_->Start();
  if (config_.mesh) {
    if (auto s = StartMesh(); !s.ok()) return s;
  }
  if (shard_manager_) {
    RefreshRoutable();
    shard_manager_->Start();
  }
  AddAdminRoutes(*admin_);
  if (auto s = admin_->Start(); !s.ok()) return s;
  started_at_ = clock_->Now();
  started_ = true;
  return absl::OkStatus();
}

namespace {

mesh::Options MeshOptions(const config::MeshConfig& c) {
  mesh::Options o = mesh::Options::Profile(c.gossip.profile).value_or(mesh::Options::Lan());
  o.cluster_name = c.identity.cluster_name;
  const auto& g = c.gossip;
  if (g.probe_interval) o.probe_interval = *g.probe_interval;
  if (g.probe_timeout) o.probe_timeout = *g.probe_timeout;
  if (g.indirect_checks) o.indirect_checks = *g.indirect_checks;
  if (g.suspicion_mult) o.suspicion_mult = *g.suspicion_mult;
  if (g.suspicion_max_timeout_mult) o.suspicion_max_timeout_mult = *g.suspicion_max_timeout_mult;
  if (g.retransmit_mult) o.retransmit_mult = *g.retransmit_mult;
  if (g.gossip_interval) o.gossip_interval = *g.gossip_interval;
  if (g.gossip_nodes) o.gossip_nodes = *g.gossip_nodes;
  if (g.gossip_to_the_dead) o.gossip_to_the_dead = *g.gossip_to_the_dead;
  if (g.push_pull_interval) o.push_pull_interval = *g.push_pull_interval;
  if (g.reconnect_interval) o.reconnect_interval = *g.reconnect_interval;
  if (g.dead_retention) o.dead_retention = *g.dead_retention;
  if (g.send_timeout) o.send_timeout = *g.send_timeout;
  o.seed = static_cast<std::uint64_t>(::getpid()) ^
           static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return o;
}

}  // namespace

absl::Status Node::StartMesh() {
  const auto& c = *config_.mesh;
  if (!grpc_) return absl::FailedPreconditionError("omniRelay.mesh needs the gRPC inbound");
  std::string advertise = c.identity.advertise_address;
  if (advertise.empty()) {
    advertise = grpc_->address();
    // A wildcard bind is not dialable: advertise loopback instead.
    for (const char* wildcard : {"0.0.0.0:", "[::]:"}) {
      if (advertise.rfind(wildcard, 0) == 0) {
        advertise = "127.0.0.1:" + advertise.substr(std::string_view(wildcard).size());
      }
    }
  }
  // Where members' outbounds reach our data plane: the public gRPC
  // listener (the frame relay's when it fronts grpc_) and the HTTP inbound.
  auto dialable = [](std::string address) {
    for (const char* wildcard : {"0.0.0.0:", "[::]:"}) {
      if (address.rfind(wildcard, 0) == 0) {
        address = "127.0.0.1:" + address.substr(std::string_view(wildcard).size());
      }
    }
    return address;
  };
  std::map<std::string, std::string> endpoints = c.identity.advertise_endpoints;
  if (!endpoints.count("grpc"))
    endpoints["grpc"] = dialable(relay_ ? relay_->address() : grpc_->address());
  if (!endpoints.count("http") && http_) endpoints["http"] = dialable(http_->address());
  auto options = MeshOptions(c);
  // Gossip dials with the node's own TLS identity: under mTLS the members'
  // listeners require it, and a plaintext fallback would be a downgrade.
  gossip_transport_ = std::make_shared<mesh::GrpcGossipTransport>(
      options.send_timeout, c.peer_addresses, tls_ ? tls::GrpcChannelCredentials(*tls_) : nullptr);
  mesh::LocalIdentity self{c.identity.node_id, advertise,
                           mesh::MemberMeta{c.identity.roles, c.identity.region, c.identity.zone,
                                            c.identity.labels, endpoints}};
  membership_ = mesh::Membership::Create(std::move(self), options, clock_, gossip_transport_);
  gossip_transport_->SetStats(&membership_->stats());
  // Heartbeat grace: a member is probed by this node about once per
  // n probe intervals; the membership verdict (dead/left) disconnects at once.
  mesh_health_ = peers::PeerLeaseHealthTracker::Create(
      peers::PeerLeaseHealthOptions{.heartbeat_grace = 50 * options.probe_interval}, clock_,
      metrics_);
  mesh::FeedHealthTracker(*membership_, mesh_health_);
  if (shard_manager_) {
    // A membership change may change the shard maps this node leads.
    membership_->AddListener(
        [this, weak = std::weak_ptr(shard_manager_)](const mesh::MemberEvent& e) {
          if (e.kind == mesh::MemberEvent::Kind::kHeartbeat) return;
          RefreshRoutable();
          if (auto manager = weak.lock()) manager->Poke();
        });
  }
  membership_->AddListener([](const mesh::MemberEvent& e) {
    if (e.kind == mesh::MemberEvent::Kind::kHeartbeat) return;
    core::LogInfo("mesh.member", {{"change", std::string(mesh::MemberEventKindName(e.kind))},
                                  {"id", e.member.id},
                                  {"incarnation", e.member.incarnation}});
  });
  for (const auto& outbound : membership_outbounds_) {
    std::weak_ptr<transport::PeerPool> weak = outbound.pool;
    mesh::FeedPeerList(*membership_, outbound.selector, outbound.transport,
                       [weak, name = outbound.name, http = outbound.transport == "http",
                        scheme = tls_ ? std::string("https://")
                                      : std::string()](const std::vector<mesh::DataPeer>& members) {
                         auto pool = weak.lock();
                         if (!pool) return;
                         std::vector<transport::PeerEndpoint> peers;
                         std::vector<std::string> ids;
                         for (const auto& m : members) {
                           // Under omniRelay.tls members are dialled over TLS
                           // with this node's identity, never plaintext.
                           std::string address =
                               http ? (scheme.empty() ? "http://" : scheme) + m.address + "/"
                                    : scheme + m.address;
                           peers.push_back({m.id, std::move(address), m.region, m.zone});
                           ids.push_back(m.id);
                         }
                         if (auto s = pool->SetPeers(std::move(peers)); !s.ok()) {
                           core::LogWarn("mesh.outbound.peers_refused",
                                         {{"outbound", name}, {"error", std::string(s.message())}});
                           return;
                         }
                         core::LogInfo("mesh.outbound.peers", {{"outbound", name}, {"peers", ids}});
                       });
  }
  mesh_metrics_ = mesh::RegisterMeshMetrics(*metrics_, membership_);
  gossip_service_->Attach(membership_);
  bp_link_->Attach(membership_);  // gossips this node's backpressure, follows members'
  membership_->Start(c.seeds);
  core::LogInfo("mesh.started", {{"id", c.identity.node_id},
                                 {"address", advertise},
                                 {"cluster", c.identity.cluster_name},
                                 {"seeds", c.seeds},
                                 {"profile", c.gossip.profile}});
  return absl::OkStatus();
}

nlohmann::json Node::RoleMap() const {
  if (!config_.mesh) return nullptr;
  const auto& id = config_.mesh->identity;
  nlohmann::json self = {{"id", id.node_id},  {"cluster", id.cluster_name},
                         {"roles", id.roles}, {"region", id.region},
                         {"zone", id.zone},   {"labels", id.labels}};
  nlohmann::json map = nlohmann::json::object();
  if (membership_) {
    self["address"] = membership_->SelfRecord().address;
    self["incarnation"] = membership_->incarnation();
    for (const auto& m : membership_->Members()) {
      const auto& r = m.record;
      map[r.id] = {{"roles", r.meta.roles},
                   {"region", r.meta.region},
                   {"zone", r.meta.zone},
                   {"labels", r.meta.labels},
                   {"state", std::string(mesh::MemberStateName(r.state))}};
    }
  }
  return {{"self", self}, {"roleMap", map}};
}

void Node::Drain() {
  // A draining node leaves the mesh first, so members stop routing to it
  // (they see "left", not a failure).
  if (membership_) membership_->Leave();
  dispatcher_->Drain();
}

bool Node::WaitIdle(std::chrono::milliseconds timeout) { return dispatcher_->WaitIdle(timeout); }

void Node::Stop() {
  if (stopped_ || !started_) return;
  stopped_ = true;
  dispatcher_->Drain();
  if (shard_manager_) shard_manager_->Stop();
  if (bp_shards_) bp_shards_->Stop();
  if (membership_) membership_->Stop();
  if (gossip_transport_) gossip_transport_->Shutdown(std::chrono::milliseconds(500));
  if (relay_) relay_->Shutdown(std::chrono::milliseconds(500));
  // Parked ResourceLease long polls end now ("no item"), while their
  // transports can still answer them.
  for (auto& [name, queue] : queues_) queue->CancelWaiters();
  if (grpc_) grpc_->Shutdown(std::chrono::milliseconds(500));
  if (http_) http_->Stop();
  if (gateway_) gateway_->Stop();
  if (leadership_) leadership_->Stop();  // resigns: successors take over at once
  shard_watcher_.reset();
  dispatcher_->Stop();
  if (replication_) replication_->Close();  // writes what is buffered
  if (hub_log_) hub_log_->Close();
  if (backpressure_diag_) backpressure_diag_->Close();  // ends SSE streams
  if (bp_hub_) bp_hub_->Close();
  if (admin_) admin_->Stop();
}

nlohmann::json Node::ReadyInfo() const {
  nlohmann::json info = {{"name", config_.service}, {"pid", static_cast<int>(::getpid())}};
  if (grpc_) info["grpc"] = grpc_address();
  if (http_) info["http"] = http_->address();
  if (admin_) info["admin"] = admin_->address();
  if (gateway_) info["gateway"] = gateway_->address();
  return info;
}

std::pair<bool, std::vector<std::string>> Node::Readiness() const {
  std::vector<std::string> reasons;
  if (!started_) reasons.push_back("not started");
  if (dispatcher_->draining()) reasons.push_back("draining");
  if (membership_) {
    if (auto refusal = membership_->refusal(); !refusal.empty()) {
      reasons.push_back("mesh: join refused: " + refusal);
    }
  }
  for (const auto& [name, outbound] : dispatcher_->outbounds()) {
    if (!outbound->HasAvailablePeers()) {
      reasons.push_back("outbound '" + name + "' has no available peers");
    }
  }
  return {reasons.empty(), reasons};
}

nlohmann::json Node::Introspect() const {
  nlohmann::json out = dispatcher_->Introspect();
  out["addresses"] = ReadyInfo();
  out["startedAt"] = core::FormatTimestamp(started_at_);
  if (rate_limiter_) out["rateLimit"] = rate_limiter_->Snapshot();
  if (echo_stats_) out["echo"] = echo_stats_->ToJson();
  if (gateway_) out["gateway"] = gateway_->Introspect();
  if (!queues_.empty()) out["resourceLease"] = ResourceLeaseStats();
  if (config_.mesh) out["mesh"] = RoleMap();
  if (leadership_) out["leadership"] = LeadersJson();
  out["config"] = config::ToJson(config_);
  // Which routes the frame relay serves (the rest take the grpc++ path).
  nlohmann::json frame = nlohmann::json::array();
  for (const auto& r : frame_routes_)
    frame.push_back({{"prefix", r.prefix}, {"outbound", r.outbound}});
  out["frameRoutes"] = frame;
  return out;
}

absl::Status Node::StartLeadership() {
  if (!config_.leadership) return absl::OkStatus();
  const auto& l = *config_.leadership;
  coord::StoreOptions store;
  store.kind = l.store;
  store.path = l.path;
  store.endpoints = l.endpoints;
  store.max_clock_skew = l.max_clock_skew;
  store.dial_timeout = l.dial_timeout;
  if (config_.mesh) store.key_prefix = "/omnirelay/" + config_.mesh->identity.cluster_name + "/";
  // A mis-set store fails the start here, naming the path or endpoints.
  auto opened = coord::LeadershipStore::Open(store, clock_, metrics_.get());
  if (!opened.ok()) return opened.status();
  coord_store_ = std::move(*opened);
  leadership::LeadershipOptions options;
  options.node_id = config_.mesh ? config_.mesh->identity.node_id : config_.service;
  options.store = store;
  options.lease_ttl = l.lease_ttl;
  options.bootstrap_step = l.bootstrap_step;
  options.failover_step = l.failover_step;
  for (const auto& scope : l.scopes) options.candidacies.push_back({scope.scope, scope.priority});
  options.observed_scopes = l.observe;
  for (const auto& scope : leader_scopes_) options.observed_scopes.push_back(scope);
  options.directory = leader_directory_;
  options.on_change = [this](const leadership::LeadershipChange& change) {
    RecordLeadershipSpan(change);
  };
  options.promote_regional_to_global = l.promote_regional_to_global;
  options.promotion_priority = l.promotion_priority;
  leadership_ =
      leadership::LeadershipManager::Create(options, coord_store_, clock_, metrics_.get());
  return leadership_->Start();
}

void Node::RecordLeadershipSpan(const leadership::LeadershipChange& change) {
  // One span per change, in the tracing middleware's recorder and export
  // (/omnirelay/traces), beside the `leadership.changed` log event. A change
  // is an instant: start == end; it opens its own trace.
  middleware::Span span;
  span.trace_id = middleware::RandomHex(16);
  span.span_id = middleware::RandomHex(8);
  span.name = "leadership.change";
  span.kind = "internal";
  span.status = "OK";
  span.start = change.at;
  span.end = change.at;
  span.attributes = {
      {"leadership.scope", change.scope},
      {"leadership.leader", change.leader},
      {"leadership.previous", change.previous},
      {"leadership.fencing_token", std::to_string(change.fencing_token)},
      {"leadership.previous_fencing_token", std::to_string(change.previous_fencing_token)},
      {"leadership.observer", config_.mesh ? config_.mesh->identity.node_id : config_.service}};
  spans_->Record(std::move(span));
}

nlohmann::json Node::LeadersJson() const {
  if (!leadership_) return nullptr;
  nlohmann::json scopes = nlohmann::json::array();
  for (const auto& scope : leadership_->Scopes()) {
    nlohmann::json entry = {
        {"scope", scope.scope},
        {"leader", scope.leader ? nlohmann::json(scope.leader->node) : nullptr},
        {"fencingToken", scope.fencing_token},
        {"held", scope.held},
        {"candidate", scope.candidate},
        {"priority", scope.candidate ? nlohmann::json(scope.priority) : nullptr}};
    entry["leaseExpiresAt"] = scope.lease_expires_at
                                  ? nlohmann::json(core::FormatTimestamp(*scope.lease_expires_at))
                                  : nullptr;
    scopes.push_back(std::move(entry));
  }
  return {{"node", leadership_->node_id()},
          {"store", config_.leadership->store},
          {"readyForLeaderWork", leadership_->ready_for_leader_work()},
          {"fencedWritesRejected", coord_store_->fenced_writes_rejected()},
          {"scopes", scopes}};
}

std::optional<http::HttpResponse> Node::Deny(const http::HttpRequest& request,
                                             bool mutating) const {
  if (!mutating && config_.admin.read_access == "open") return std::nullopt;
  // A verified client certificate (admin over mTLS) is a credential.
  if (!request.peer.empty()) return std::nullopt;
  const std::string_view auth = request.headers.Get("authorization").value_or("");
  if (auth.size() > 7 && (auth.starts_with("Bearer ") || auth.starts_with("bearer ")) &&
      TokenMatches(auth.substr(7), admin_token_)) {
    return std::nullopt;
  }
  const bool mtls = tls_ && config_.admin.tls && tls_->client_auth != tls::ClientAuth::kNone;
  if (admin_token_.empty() && !mtls) {
    const nlohmann::json closed = {
        {"error",
         "the control plane is closed: configure omniRelay.admin.tokenFile or admin mTLS "
         "(omniRelay.tls.clientCertificate)"}};
    return http::HttpResponse::Json(403, closed.dump());
  }
  const nlohmann::json unauthorized = {
      {"error",
       "needs Authorization: Bearer <token of omniRelay.admin.tokenFile> or a verified client "
       "certificate"}};
  auto response = http::HttpResponse::Json(401, unauthorized.dump());
  response.headers.Set("www-authenticate", "Bearer realm=\"omnirelay-admin\"");
  return response;
}

http::HttpHandler Node::Guard(http::HttpHandler handler, bool mutating) {
  return [this, handler = std::move(handler), mutating](const http::HttpRequest& request) {
    if (auto denied = Deny(request, mutating)) return std::move(*denied);
    return handler(request);
  };
}

void Node::AdminRoute(http::HttpServer& server, std::string method, std::string path,
                      http::HttpHandler handler) {
  // Every admin route but the probes passes Deny(): anything but GET mutates.
  const bool mutating = method != "GET";
  server.Route(std::move(method), std::move(path), Guard(std::move(handler), mutating));
}

void Node::AddAdminRoutes(http::HttpServer& server) {
  server.Route("GET", "/healthz", [](const http::HttpRequest&) {
    return http::HttpResponse::Json(200, R"({"status":"ok"})");
  });
  server.Route("GET", "/readyz", [this](const http::HttpRequest&) {
    auto [ready, reasons] = Readiness();
    nlohmann::json body = {{"ready", ready}, {"reasons", reasons}};
    auto response = http::HttpResponse::Json(ready ? 200 : 503, body.dump());
    if (!ready) response.headers.Set("retry-after", "1");
    return response;
  });
  AdminRoute(server, "GET", "/metrics", [this](const http::HttpRequest&) {
    auto response = http::HttpResponse::Text(200, metrics_->RenderPrometheus());
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    return response;
  });
  AdminRoute(server, "GET", "/omnirelay/introspect", [this](const http::HttpRequest&) {
    return http::HttpResponse::Json(200, Introspect().dump());
  });
  AdminRoute(server, "GET", "/omnirelay/traces", [this](const http::HttpRequest&) {
    return http::HttpResponse::Json(200, nlohmann::json{{"spans", spans_->ToJson()}}.dump());
  });
  AdminRoute(server, "GET", "/omnirelay/echo/stats", [this](const http::HttpRequest&) {
    if (!echo_stats_) return http::HttpResponse::Json(404, R"({"error":"echo is not enabled"})");
    return http::HttpResponse::Json(200, echo_stats_->ToJson().dump());
  });
  AdminRoute(server, "GET", "/omnirelay/gateway", [this](const http::HttpRequest&) {
    if (!gateway_) return http::HttpResponse::Json(404, R"({"error":"gateway is not configured"})");
    return http::HttpResponse::Json(200, gateway_->Introspect().dump());
  });
  AdminRoute(server, "GET", "/omnirelay/control/lease-health", [this](const http::HttpRequest&) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [name, pool] : pools_) {
      auto health = pool->LeaseHealth();
      out[name] = health.is_null() ? pool->Snapshot() : health;
    }
    if (mesh_health_) out["mesh"] = mesh_health_->Diagnostics().ToJson();
    return http::HttpResponse::Json(200, nlohmann::json{{"outbounds", out}}.dump());
  });
  AddResourceLeaseRoutes(server);
  AdminRoute(server, "GET", "/omnirelay/control/peers", [this](const http::HttpRequest&) {
    if (!membership_) {
      return http::HttpResponse::Json(404, R"({"error":"mesh is not configured"})");
    }
    return http::HttpResponse::Json(200, membership_->ToJson().dump());
  });
  AdminRoute(server, "GET", "/omnirelay/control/leaders", [this](const http::HttpRequest&) {
    if (!leadership_) {
      return http::HttpResponse::Json(404, R"({"error":"leadership is not configured"})");
    }
    return http::HttpResponse::Json(200, LeadersJson().dump());
  });
  auto status_json = [](const absl::Status& status) {
    nlohmann::json body = {{"error", std::string(status.message())},
                           {"status", std::string(core::StatusCodeName(status.code()))}};
    if (auto code = core::ErrorCode(status)) body["code"] = *code;
    return http::HttpResponse::Json(core::ToHttpStatus(status.code()), body.dump());
  };
  AdminRoute(server, "POST", "/omnirelay/control/promote",
             [this, status_json](const http::HttpRequest& request) {
               if (!leadership_) {
                 return http::HttpResponse::Json(404,
                                                 R"({"error":"leadership is not configured"})");
               }
               auto status = leadership_->Promote(request.QueryParam("scope").value_or(""),
                                                  request.QueryParam("node").value_or(""));
               if (!status.ok()) return status_json(status);
               return http::HttpResponse::Json(200, LeadersJson().dump());
             });
  AdminRoute(server, "POST", "/omnirelay/control/fenced-write",
             [this, status_json](const http::HttpRequest& request) {
               if (!leadership_) {
                 return http::HttpResponse::Json(404,
                                                 R"({"error":"leadership is not configured"})");
               }
               const std::string scope = request.QueryParam("scope").value_or("");
               // The token reported is exactly the one the write was fenced with.
               auto held = leadership_->Held(scope);
               if (!held) {
                 return status_json(core::MakeStatus(
                     core::StatusCode::kFailedPrecondition,
                     "not the leader of " + scope + " (node " + leadership_->node_id() + ")",
                     "not-leader"));
               }
               auto written = coord_store_->FencedPut(*held, request.QueryParam("key").value_or(""),
                                                      request.QueryParam("value").value_or(""));
               if (!written.ok()) return status_json(written.status());
               nlohmann::json body = {{"revision", *written},
                                      {"fencingToken", held->fencing_token},
                                      {"node", leadership_->node_id()}};
               return http::HttpResponse::Json(200, body.dump());
             });
  AdminRoute(
      server, "POST", "/omnirelay/control/backpressure", [this](const http::HttpRequest& request) {
        if (!rate_limiter_) {
          return http::HttpResponse::Json(404, R"({"error":"rate limiting is not configured"})");
        }
        const std::string mode = request.QueryParam("mode").value_or("");
        if (mode != "normal" && mode != "backpressure") {
          return http::HttpResponse::Json(400,
                                          R"({"error":"mode must be normal or backpressure"})");
        }
        rate_limiter_->SetBackpressure(mode == "backpressure");
        return http::HttpResponse::Json(200, rate_limiter_->Snapshot().dump());
      });
  AdminRoute(server, "GET", "/omnirelay/control/shards", [this](const http::HttpRequest& request) {
    if (!shard_router_) {
      return http::HttpResponse::Json(404, R"({"error":"shards are not configured"})");
    }
    const std::string only = request.QueryParam("namespace").value_or("");
    if (!only.empty() && shard_router_->Find(only) == nullptr) {
      return http::HttpResponse::Json(
          404, nlohmann::json{{"error", "unknown shard namespace '" + only + "'"}}.dump());
    }
    auto document = shard_router_->ToJson(only);
    shards::AddRebalanceView(document, *coord_store_, shard_router_->namespaces(), *shard_holder_,
                             clock_->Now());
    return http::HttpResponse::Json(200, document.dump());
  });
  AdminRoute(server, "GET", "/omnirelay/control/shards/resolve",
             [this, status_json](const http::HttpRequest& request) {
               if (!shard_router_) {
                 return http::HttpResponse::Json(404, R"({"error":"shards are not configured"})");
               }
               const std::string ns = request.QueryParam("namespace").value_or("");
               const std::string key = request.QueryParam("key").value_or("");
               auto route = shard_router_->Route(ns, key);
               if (!route.ok()) return status_json(route.status());
               nlohmann::json replicas = nlohmann::json::array();
               auto placement = route->map->Placement(route->shard);
               for (std::size_t r = 1; r < placement.size(); ++r) {
                 replicas.push_back(route->map->nodes[placement[r]].id);
               }
               nlohmann::json body = {{"namespace", ns},
                                      {"key", key},
                                      {"shard", route->shard},
                                      {"owner", route->owner->id},
                                      {"address", route->owner->address},
                                      {"replicas", replicas},
                                      {"version", route->map->version},
                                      {"node", shard_router_->self_id()}};
               return http::HttpResponse::Json(200, body.dump());
             });
  // The Rebalance call: any node takes it, writes the request for the
  // namespace's leader and waits (bounded) for the map version that applies it.
  AdminRoute(server, "POST", "/omnirelay/control/shards/rebalance",
             [this, status_json](const http::HttpRequest& request) {
               if (!shard_router_) {
                 return http::HttpResponse::Json(404, R"({"error":"shards are not configured"})");
               }
               const std::string shard_text = request.QueryParam("shard").value_or("");
               std::uint32_t shard = 0;
               if (!absl::SimpleAtoi(core::ToAbsl(shard_text), &shard)) {
                 return status_json(absl::InvalidArgumentError("shard must be a shard id, got '" +
                                                               shard_text + "'"));
               }
               const auto timeout =
                   core::ParseDuration(request.QueryParam("timeout").value_or("10s"))
                       .value_or(std::chrono::seconds(10));
               auto body = RebalanceShard(request.QueryParam("namespace").value_or(""), shard,
                                          request.QueryParam("to").value_or(""), timeout);
               if (!body.ok()) return status_json(body.status());
               return http::HttpResponse::Json(200, body->dump());
             });
  // A runtime QPS budget: ?namespace=N&qps=Q[&shard=S] (no shard: the namespace's).
  AdminRoute(server, "POST", "/omnirelay/control/shards/budget",
             [this, status_json](const http::HttpRequest& request) {
               if (!shard_router_) {
                 return http::HttpResponse::Json(404, R"({"error":"shards are not configured"})");
               }
               const std::string qps_text = request.QueryParam("qps").value_or("");
               double qps = 0;
               if (!absl::SimpleAtod(core::ToAbsl(qps_text), &qps)) {
                 return status_json(absl::InvalidArgumentError("qps must be a number >= 0, got '" +
                                                               qps_text + "'"));
               }
               std::optional<std::uint32_t> shard;
               if (auto text = request.QueryParam("shard"); text && !text->empty()) {
                 std::uint32_t id = 0;
                 if (!absl::SimpleAtoi(core::ToAbsl(*text), &id)) {
                   return status_json(
                       absl::InvalidArgumentError("shard must be a shard id, got '" + *text + "'"));
                 }
                 shard = id;
               }
               auto body = SetShardBudget(request.QueryParam("namespace").value_or(""), shard, qps);
               if (!body.ok()) return status_json(body.status());
               return http::HttpResponse::Json(200, body->dump());
             });
}

core::StatusOr<nlohmann::json> Node::RebalanceShard(const std::string& ns, std::uint32_t shard,
                                                    const std::string& to, core::Duration timeout) {
  if (!shard_router_)
    return absl::FailedPreconditionError("shards are not configured on this node");
  if (shard_router_->Find(ns) == nullptr) return shard_router_->Route(ns, "k").status();
  auto map = shard_holder_->Get(ns);
  if (!map) return shard_router_->Route(ns, "k").status();
  // Validate against the held map first, so a typo fails here and now.
  if (shard >= map->shard_count()) {
    return absl::InvalidArgumentError("shard " + std::to_string(shard) + " of '" + ns +
                                      "' is out of range (0.." +
                                      std::to_string(map->shard_count() - 1) + ")");
  }
  if (map->width < 2) {
    return core::MakeStatus(core::StatusCode::kFailedPrecondition,
                            "namespace '" + ns + "' has no replicas to move to", "not-a-replica");
  }
  if (!to.empty()) {
    shards::ShardMap check = *map;
    if (auto s = check.Move(shard, to, "check", ""); !s.ok()) return s;
  }
  const std::string from = map->Owner(shard).id;
  const auto started = clock_->Now();
  if (auto s = shards::RequestRebalance(*coord_store_, ns, shard, to, "manual",
                                        shard_router_->self_id());
      !s.ok()) {
    return s;
  }
  if (timeout <= core::Duration::zero()) timeout = std::chrono::seconds(10);
  while (clock_->Now() - started < timeout) {
    auto now_map = shard_holder_->Get(ns);
    if (now_map && now_map->version > map->version && now_map->Owner(shard).id != from) {
      const auto elapsed =
          std::chrono::duration_cast<std::chrono::milliseconds>(clock_->Now() - started);
      nlohmann::json body = {{"namespace", ns},
                             {"shard", shard},
                             {"from", from},
                             {"to", now_map->Owner(shard).id},
                             {"version", now_map->version},
                             {"previousVersion", map->version},
                             {"elapsedMs", elapsed.count()},
                             {"node", shard_router_->self_id()},
                             {"decision", now_map->last_rebalance}};
      return body;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return core::MakeStatus(core::StatusCode::kDeadlineExceeded,
                          "the rebalance of shard " + std::to_string(shard) + " of '" + ns +
                              "' was requested but no map version applying it reached node " +
                              shard_router_->self_id() +
                              " in time (is a leader of the namespace's scope up?)",
                          "rebalance-timeout");
}

core::StatusOr<nlohmann::json> Node::SetShardBudget(const std::string& ns,
                                                    std::optional<std::uint32_t> shard,
                                                    double qps) {
  if (!shard_router_)
    return absl::FailedPreconditionError("shards are not configured on this node");
  const auto* options = shard_router_->Find(ns);
  if (options == nullptr) return shard_router_->Route(ns, "k").status();
  if (shard && *shard >= options->spec.shard_count) {
    return absl::InvalidArgumentError("shard " + std::to_string(*shard) + " of '" + ns +
                                      "' is out of range (0.." +
                                      std::to_string(options->spec.shard_count - 1) + ")");
  }
  auto stored = shards::SetBudget(*coord_store_, ns, shard, qps, shard_router_->self_id());
  if (!stored.ok()) return stored.status();
  // In force here at once (the sampler and the owner's admission read it);
  // every other node applies it at its next reconcile (ShardManager::CheckBudgets).
  shard_router_->ApplyBudgets(ns, *stored);
  nlohmann::json shards_json = nlohmann::json::object();
  for (const auto& [id, q] : stored->shard_qps) shards_json[std::to_string(id)] = q;
  return nlohmann::json{{"namespace", ns},
                        {"namespaceQps", stored->ns_qps.value_or(options->budget_qps)},
                        {"shardQps", std::move(shards_json)},
                        {"node", shard_router_->self_id()}};
}

void Node::RecordShardSpan(std::string name, core::TimePoint at,
                           std::vector<std::pair<std::string, std::string>> attributes) {
  // As leadership.change: an instant span opening its own trace, in the
  // tracing recorder and export (/omnirelay/traces), beside the log event.
  middleware::Span span;
  span.trace_id = middleware::RandomHex(16);
  span.span_id = middleware::RandomHex(8);
  span.name = std::move(name);
  span.kind = "internal";
  span.status = "OK";
  span.start = at;
  span.end = at;
  for (auto& [key, value] : attributes) span.attributes[key] = std::move(value);
  span.attributes["shards.observer"] = shard_router_ ? shard_router_->self_id() : "";
  spans_->Record(std::move(span));
}

absl::Status Node::BuildShards() {
  if (!config_.shards) return absl::OkStatus();
  const std::string self = config_.mesh ? config_.mesh->identity.node_id : config_.service;
  std::vector<shards::NamespaceOptions> namespaces;
  for (const auto& [name, n] : config_.shards->namespaces) {
    shards::NamespaceOptions ns;
    ns.spec.ns = name;
    ns.spec.shard_count = static_cast<std::uint32_t>(n.shards);
    ns.spec.replicas = static_cast<std::uint32_t>(n.replicas);
    ns.spec.strategy = shards::ParseStrategy(n.strategy).value_or(shards::Strategy::kRendezvous);
    ns.spec.virtual_nodes = static_cast<std::uint32_t>(n.virtual_nodes);
    ns.spec.region = n.region;
    ns.spec.zone = n.zone;
    if (auto s = ns.spec.Validate(); !s.ok()) {
      return WithKeyPath("omniRelay.shards.namespaces." + name, s);
    }
    ns.leader_scope = n.leader_scope;
    ns.owner_role = n.owner_role;
    ns.budget_qps = n.budget;
    ns.service = n.service;
    ns.local_service = n.local_service;
    namespaces.push_back(std::move(ns));
  }
  shard_holder_ = std::make_shared<shards::ShardMapHolder>(metrics_.get());
  // Routable = alive or suspect in this node's membership view (a member
  // being refuted is still serving). Self is always routable.
  auto routable = [this, self](std::string_view id) {
    if (id == self) return true;
    std::shared_ptr<const std::set<std::string, std::less<>>> ids;
    {
      std::lock_guard lock(routable_mu_);
      ids = routable_ids_;
    }
    return ids != nullptr && ids->find(id) != ids->end();
  };
  shard_router_ =
      std::make_shared<shards::ShardRouter>(self, namespaces, shard_holder_, routable, clock_);
  for (const auto& ns : namespaces) {
    if (ns.service.empty()) continue;
    const auto& n = config_.shards->namespaces.at(ns.spec.ns);
    const std::string outbound_name = "shards." + ns.spec.ns;
    shards::ShardOutboundOptions options{
        .ns = ns.spec.ns,
        .local_service = ns.local_service,
        .peer_addresses =
            config_.mesh ? config_.mesh->peer_addresses : std::map<std::string, std::string>{},
        .tls = tls_,
        .forward = {.max_in_flight_per_peer = n.forward_max_in_flight_per_peer,
                    .breaker_consecutive_failures = n.forward_breaker_failures,
                    .breaker_open_delay = n.forward_breaker_open_delay,
                    .threads = n.forward_threads},
        .throttle_pressured_shards = config_.backpressure.shard_throttle == "shard",
        .retry_after = config_.backpressure.retry_after};
    if (n.geo) {
      // Geo stickiness (docs/shards.md): the geo chooser's mode picks the
      // region, the shard map picks the owner or a replica in it.
      peers::GeoChooserOptions geo;
      geo.region = !n.geo->region.empty() ? n.geo->region
                   : config_.mesh         ? config_.mesh->identity.region
                                          : std::string();
      geo.latency_threshold_ms = n.geo->latency_threshold_ms;
      geo.latency_signal = *peers::ParseGeoLatencySignal(n.geo->latency_signal);
      geo.failure_rate_threshold = n.geo->failure_rate_threshold;
      geo.min_samples = static_cast<std::uint64_t>(n.geo->min_samples);
      geo.hold = n.geo->hold;
      geo.evaluate_every = n.geo->evaluate_every;
      geo.probe_every = static_cast<std::uint32_t>(n.geo->probe_every);
      geo.inner = n.geo->inner_chooser;
      geo.tags = {{"rpc.service", ns.service}, {"outbound", outbound_name}};
      options.geo = geo;
    }
    auto outbound = std::make_shared<shards::ShardOutbound>(std::move(options), shard_router_,
                                                            dispatcher_, clock_, metrics_);
    if (auto s = dispatcher_->AddOutbound(outbound_name, outbound); !s.ok()) return s;
    if (auto s = dispatcher_->AddRoute(
            {ns.service + "/", outbound_name, dispatcher::ProcedureKind::kUnary});
        !s.ok()) {
      return WithKeyPath("omniRelay.shards.namespaces." + ns.spec.ns + ".service", s);
    }
    // Streaming procedures are routed too: the configured ones, and every
    // streaming procedure localService registers on this node (a route's
    // kind tells the inbound how to pump the call, so each needs its own).
    std::map<std::string, dispatcher::ProcedureKind> streams;
    const nlohmann::json introspection = dispatcher_->Introspect();  // outlives the loop
    for (const auto& procedure : introspection["procedures"]) {
      auto kind = dispatcher::ParseProcedureKind(procedure.value("kind", ""));
      if (procedure.value("service", "") == ns.local_service && kind &&
          *kind != dispatcher::ProcedureKind::kUnary &&
          *kind != dispatcher::ProcedureKind::kOneway) {
        streams[procedure.value("name", "")] = *kind;
      }
    }
    for (const auto& [name, kind] : n.streams) {
      streams[name] = *dispatcher::ParseProcedureKind(kind);
    }
    for (const auto& [name, kind] : streams) {
      if (auto s = dispatcher_->AddRoute({ns.service + "/" + name, outbound_name, kind}); !s.ok()) {
        return WithKeyPath("omniRelay.shards.namespaces." + ns.spec.ns + ".streams." + name, s);
      }
    }
  }
  return absl::OkStatus();
}

void Node::RefreshRoutable() {
  if (!membership_) return;
  auto ids = std::make_shared<std::set<std::string, std::less<>>>();
  for (const auto& m : membership_->Members()) {
    if (m.record.state == mesh::MemberState::kAlive ||
        m.record.state == mesh::MemberState::kSuspect) {
      ids->insert(m.record.id);
    }
  }
  std::shared_ptr<const std::set<std::string, std::less<>>> next = std::move(ids);
  std::lock_guard lock(routable_mu_);
  routable_ids_.swap(next);
}

std::vector<shards::ShardMember> Node::ShardMembers() const {
  std::vector<shards::ShardMember> out;
  if (!membership_) return out;
  for (const auto& m : membership_->Members()) {
    const auto& r = m.record;
    if (r.state != mesh::MemberState::kAlive && r.state != mesh::MemberState::kSuspect) continue;
    out.push_back({{r.id, r.address, r.meta.region, r.meta.zone}, r.meta.roles});
  }
  return out;
}

absl::Status Node::StartShards() {
  if (!config_.shards) return absl::OkStatus();
  if (!coord_store_ || !leadership_) {
    return absl::FailedPreconditionError("omniRelay.shards needs omniRelay.leadership");
  }
  auto watcher = shards::ShardMapWatcher::Start(coord_store_, shard_holder_);
  if (!watcher.ok()) return WithKeyPath("omniRelay.shards", watcher.status());
  shard_watcher_ = std::move(*watcher);
  shards::ShardManagerOptions options{.node_id = shard_router_->self_id(),
                                      .namespaces = shard_router_->namespaces(),
                                      .reconcile_interval = config_.shards->reconcile_interval,
                                      .rebalance_cooldown = config_.shards->rebalance_cooldown};
  // Load reports (the leader picks the cooler replica by them) and a span
  // per applied move and per installed map version.
  options.pending = [dispatcher = dispatcher_] { return dispatcher->in_flight(); };
  options.on_rebalance = [this](const shards::RebalanceDecision& d) {
    std::string candidates;
    for (const auto& c : d.candidates) {
      if (!candidates.empty()) candidates += ",";
      candidates += c.node + "=" + (c.load_known ? std::to_string(c.pending) : "?");
    }
    RecordShardSpan("shards.rebalance", clock_->Now(),
                    {{"shards.namespace", d.ns},
                     {"shards.shard", std::to_string(d.shard)},
                     {"shards.from", d.from},
                     {"shards.to", d.to},
                     {"shards.reason", d.reason},
                     {"shards.chooser", d.chooser},
                     {"shards.candidates_pending", candidates},
                     {"shards.version", std::to_string(d.version)}});
  };
  shard_holder_->AddChangeListener([this](const shards::ShardMap& map, std::int64_t previous) {
    RecordShardSpan("shards.map.change", clock_->Now(),
                    {{"shards.namespace", map.spec.ns},
                     {"shards.version", std::to_string(map.version)},
                     {"shards.previous_version", std::to_string(previous)},
                     {"shards.written_by", map.written_by},
                     {"shards.fencing_token", std::to_string(map.fencing_token)},
                     {"shards.nodes", std::to_string(map.nodes.size())}});
  });
  // Started by Start() once the membership runs (the member source reads it).
  shard_manager_ = std::make_shared<shards::ShardManager>(
      options, coord_store_, leadership_,
      [this] {
        // Also refreshes the routable set every reconcile, which bounds how
        // long two racing membership events can leave it stale.
        RefreshRoutable();
        return ShardMembers();
      },
      shard_holder_, clock_, metrics_.get());
  shard_manager_->SetRouter(shard_router_);  // owners request moves of over-budget shards
  return absl::OkStatus();
}

}  // namespace omnirelay::node
