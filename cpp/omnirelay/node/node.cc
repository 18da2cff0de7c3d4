#include "omnirelay/node/node.h"

#include <unistd.h>

#include "omnirelay/core/logging.h"
#include "omnirelay/mesh/mesh_metrics.h"
#include "omnirelay/mesh/peer_feed.h"

namespace omnirelay::node {

Node::Node(config::NodeConfig config)
    : config_(std::move(config)),
      clock_(core::SystemClock::Shared()),
      metrics_(core::MetricsRegistry::Default()),
      dispatcher_(std::make_shared<dispatcher::Dispatcher>(config_.service)),
      spans_(std::make_shared<middleware::SpanRecorder>()) {}

Node::~Node() { Stop(); }

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
                                 .budget_initial = r.budget_max},
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
      chain.push_back(std::make_shared<middleware::PrincipalMiddleware>());
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

absl::Status Node::Build() {
  if (config_.middleware.rate_limit) {
    const auto& n = *config_.middleware.rate_limit;
    const auto& b = config_.middleware.backpressure;
    rate_limiter_ = std::make_shared<middleware::RateLimitMiddleware>(
        middleware::RateLimitOptions{
            .normal = {n.max_concurrency, n.tokens_per_second, n.burst},
            .backpressure = {b.max_concurrency, b.tokens_per_second, b.burst}},
        clock_, metrics_);
  }
  std::vector<std::string> inbound_names = config_.middleware.inbound;
  if (rate_limiter_ &&
      std::find(inbound_names.begin(), inbound_names.end(), "rate-limit") == inbound_names.end()) {
    inbound_names.push_back("rate-limit");
  }
  auto inbound = Chain(inbound_names, nullptr);
  if (!inbound.ok()) return inbound.status();
  dispatcher_->UseInboundMiddleware(std::move(*inbound));
  auto outbound_chain = Chain(config_.middleware.outbound, nullptr);
  if (!outbound_chain.ok()) return outbound_chain.status();
  dispatcher_->UseOutboundMiddleware(*outbound_chain);

  for (const auto& [name, o] : config_.outbounds) {
    if (o.mesh) {
      // docs/mesh.md "Not built yet": the peer pool's list is fixed at start.
      return absl::UnimplementedError("omniRelay.outbounds." + name +
                                      ".mesh: peers from membership are not supported yet; "
                                      "list the endpoints");
    }
    transport::PeerPoolOptions peers{
        .chooser = o.peer_chooser,
        .max_in_flight_per_peer = o.max_in_flight_per_peer,
        .breaker_consecutive_failures =
            o.circuit_breaker.enabled ? o.circuit_breaker.consecutive_failures : 0,
        .breaker_open_delay = o.circuit_breaker.open_delay,
        .service = o.service,
        .transport = o.transport};
    // The peer kit's coordinator when built with it; the interim pool otherwise.
    std::shared_ptr<transport::PeerPool> pool;
    auto coordinated = transport::MakeCoordinatorPeerPool(o.endpoints, peers, clock_, metrics_);
    if (coordinated.ok()) {
      pool = *coordinated;
    } else if (coordinated.status().code() == absl::StatusCode::kUnimplemented) {
      pool = transport::MakeInterimPeerPool(o.endpoints, peers, clock_);
    } else {
      return absl::InvalidArgumentError("omniRelay.outbounds." + name + ": " +
                                        std::string(coordinated.status().message()));
    }
    pools_[name] = pool;
    std::shared_ptr<dispatcher::Outbound> outbound;
    if (o.transport == "grpc") {
      outbound = std::make_shared<transport::GrpcOutbound>(
          transport::GrpcOutboundOptions{.name = name,
                                         .service = o.service,
                                         .procedure = o.procedure,
                                         .endpoints = o.endpoints,
                                         .peers = peers,
                                         .threads = o.threads},
          pool, clock_);
    } else {
      outbound = std::make_shared<transport::HttpOutbound>(
          transport::HttpOutboundOptions{.name = name,
                                         .service = o.service,
                                         .procedure = o.procedure,
                                         .endpoints = o.endpoints,
                                         .peers = peers,
                                         .threads = std::max(4, o.threads)},
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
  for (const auto& r : config_.routes) {
    auto kind = dispatcher::ParseProcedureKind(r.kind);
    if (!kind) return absl::InvalidArgumentError("route kind '" + r.kind + "'");
    if (auto s = dispatcher_->AddRoute({r.prefix, r.outbound, *kind}); !s.ok()) return s;
  }
  if (config_.echo.enabled) {
    auto stats = dispatcher::RegisterEchoProcedures(
        *dispatcher_, {.instance = config_.echo.instance,
                       .max_concurrency = config_.echo.max_concurrency,
                       .latency = config_.echo.latency,
                       .procedures = config_.echo.procedures});
    if (!stats.ok()) return stats.status();
    echo_stats_ = *stats;
  }
  return absl::OkStatus();
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
    transport::GrpcInboundOptions grpc_options{.address = config_.grpc->address,
                                               .threads = config_.grpc->threads};
    if (gossip_service_) grpc_options.services.push_back(gossip_service_->service());
    grpc_ = std::make_unique<transport::GrpcInbound>(grpc_options, dispatcher_);
    if (auto s = grpc_->Start(); !s.ok()) return s;
  }
  if (config_.http) {
    http_ = std::make_unique<transport::HttpInbound>(
        transport::HttpInboundOptions{.address = config_.http->address,
                                      .threads = std::max(4, config_.http->threads)},
        dispatcher_);
    if (auto s = http_->Start(); !s.ok()) return s;
  }
  if (config_.gateway) {
    auto gateway = gateway::Gateway::Create(*config_.gateway, metrics_);
    if (!gateway.ok()) return gateway.status();
    gateway_ = std::move(*gateway);
    if (auto s = gateway_->Start(); !s.ok()) return s;
  }
  auto hp = transport::ParseHostPort(config_.admin_address);
  if (!hp.ok()) return hp.status();
  admin_ = std::make_unique<http::HttpServer>(
      http::HttpServerOptions{.host = hp->host, .port = hp->port, .threads = 1});
  if (config_.mesh) {
    if (auto s = StartMesh(); !s.ok()) return s;
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
  auto options = MeshOptions(c);
  gossip_transport_ =
      std::make_shared<mesh::GrpcGossipTransport>(options.send_timeout, c.peer_addresses);
  mesh::LocalIdentity self{
      c.identity.node_id, advertise,
      mesh::MemberMeta{c.identity.roles, c.identity.region, c.identity.zone, c.identity.labels}};
  membership_ = mesh::Membership::Create(std::move(self), options, clock_, gossip_transport_);
  gossip_transport_->SetStats(&membership_->stats());
  // Heartbeat grace: a member is probed by this node about once per
  // n probe intervals; the membership verdict (dead/left) disconnects at once.
  mesh_health_ = peers::PeerLeaseHealthTracker::Create(
      peers::PeerLeaseHealthOptions{.heartbeat_grace = 50 * options.probe_interval}, clock_,
      metrics_);
  mesh::FeedHealthTracker(*membership_, mesh_health_);
  membership_->AddListener([](const mesh::MemberEvent& e) {
    if (e.kind == mesh::MemberEvent::Kind::kHeartbeat) return;
    core::LogInfo("mesh.member", {{"event", std::string(mesh::MemberEventKindName(e.kind))},
                                  {"id", e.member.id},
                                  {"incarnation", e.member.incarnation}});
  });
  mesh_metrics_ = mesh::RegisterMeshMetrics(*metrics_, membership_);
  gossip_service_->Attach(membership_);
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
  if (membership_) membership_->Stop();
  if (gossip_transport_) gossip_transport_->Shutdown(std::chrono::milliseconds(500));
  if (grpc_) grpc_->Shutdown(std::chrono::milliseconds(500));
  if (http_) http_->Stop();
  if (gateway_) gateway_->Stop();
  dispatcher_->Stop();
  if (admin_) admin_->Stop();
}

nlohmann::json Node::ReadyInfo() const {
  nlohmann::json info = {{"name", config_.service}, {"pid", static_cast<int>(::getpid())}};
  if (grpc_) info["grpc"] = grpc_->address();
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
  if (config_.mesh) out["mesh"] = RoleMap();
  out["config"] = config::ToJson(config_);
  return out;
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
  server.Route("GET", "/metrics", [this](const http::HttpRequest&) {
    auto response = http::HttpResponse::Text(200, metrics_->RenderPrometheus());
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    return response;
  });
  server.Route("GET", "/omnirelay/introspect", [this](const http::HttpRequest&) {
    return http::HttpResponse::Json(200, Introspect().dump());
  });
  server.Route("GET", "/omnirelay/traces", [this](const http::HttpRequest&) {
    return http::HttpResponse::Json(200, nlohmann::json{{"spans", spans_->ToJson()}}.dump());
  });
  server.Route("GET", "/omnirelay/echo/stats", [this](const http::HttpRequest&) {
    if (!echo_stats_) return http::HttpResponse::Json(404, R"({"error":"echo is not enabled"})");
    return http::HttpResponse::Json(200, echo_stats_->ToJson().dump());
  });
  server.Route("GET", "/omnirelay/gateway", [this](const http::HttpRequest&) {
    if (!gateway_) return http::HttpResponse::Json(404, R"({"error":"gateway is not configured"})");
    return http::HttpResponse::Json(200, gateway_->Introspect().dump());
  });
  server.Route("GET", "/omnirelay/control/lease-health", [this](const http::HttpRequest&) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [name, pool] : pools_) {
      auto health = pool->LeaseHealth();
      out[name] = health.is_null() ? pool->Snapshot() : health;
    }
    if (mesh_health_) out["mesh"] = mesh_health_->Diagnostics().ToJson();
    return http::HttpResponse::Json(200, nlohmann::json{{"outbounds", out}}.dump());
  });
  server.Route("GET", "/omnirelay/control/peers", [this](const http::HttpRequest&) {
    if (!membership_) {
      return http::HttpResponse::Json(404, R"({"error":"mesh is not configured"})");
    }
    return http::HttpResponse::Json(200, membership_->ToJson().dump());
  });
  server.Route("POST", "/omnirelay/control/backpressure", [this](const http::HttpRequest& request) {
    if (!rate_limiter_) {
      return http::HttpResponse::Json(404, R"({"error":"rate limiting is not configured"})");
    }
    const std::string mode = request.QueryParam("mode").value_or("");
    if (mode != "normal" && mode != "backpressure") {
      return http::HttpResponse::Json(400, R"({"error":"mode must be normal or backpressure"})");
    }
    rate_limiter_->SetBackpressure(mode == "backpressure");
    return http::HttpResponse::Json(200, rate_limiter_->Snapshot().dump());
  });
}

}  // namespace omnirelay::node
