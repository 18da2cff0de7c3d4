#include "omnirelay/node/node.h"

#include <unistd.h>

#include "omnirelay/core/logging.h"
#include "omnirelay/resourcelease/service.h"

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
  if (!config_.middleware.rate_limit && config_.resource_lease &&
      config_.resource_lease->throttle_node) {
    // ResourceLease backpressure throttles the node: without a configured
    // normal profile the node runs unlimited and switches to the
    // `middleware.backpressure` profile while a queue is under backpressure.
    config_.middleware.rate_limit = config::RateLimitProfileConfig{};
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
  if (auto s = BuildResourceLease(); !s.ok()) return s;
  return absl::OkStatus();
}

absl::Status Node::BuildResourceLease() {
  if (!config_.resource_lease) return absl::OkStatus();
  const auto& rl = *config_.resource_lease;
  backpressure_diag_ = std::make_shared<resourcelease::BackpressureDiagnostics>();
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
    if (rate_limiter_ && rl.throttle_node) {
      // Runs under the queue's lock; throttle_mu_ orders flips coming from
      // several queues so the limiter ends in the state of the last one.
      (*queue)->AddBackpressureListener([this](const resourcelease::BackpressureSignal& signal) {
        std::lock_guard lock(throttle_mu_);
        throttling_[signal.queue] = signal.active;
        bool any = false;
        for (const auto& [ns, on] : throttling_) any = any || on;
        rate_limiter_->SetBackpressure(any);
        core::Log(core::LogLevel::kInfo, "resourcelease backpressure",
                  {{"namespace", signal.queue},
                   {"state", signal.active ? "backpressure" : "normal"},
                   {"pending", signal.pending},
                   {"node.rateLimit", any ? "backpressure" : "normal"}});
      });
    }
    if (auto s = resourcelease::RegisterProcedures(*dispatcher_, *queue,
                                                   {.max_lease_wait = rl.max_lease_wait}, clock_);
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

void Node::AddResourceLeaseRoutes(http::HttpServer& server) {
  server.Route("GET", "/omnirelay/control/backpressure", [this](const http::HttpRequest&) {
    nlohmann::json body = {
        {"namespaces",
         backpressure_diag_ ? backpressure_diag_->Latest() : nlohmann::json::object()},
        {"rateLimit", rate_limiter_ ? rate_limiter_->Snapshot() : nlohmann::json(nullptr)}};
    return http::HttpResponse::Json(200, body.dump());
  });
  server.Route(
      "GET", "/omnirelay/control/backpressure/stream", [this](const http::HttpRequest& request) {
        if (!backpressure_diag_) {
          return http::HttpResponse::Json(404, R"({"error":"resourceLease is not configured"})");
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
  server.Route("GET", "/omnirelay/control/resourcelease", [this](const http::HttpRequest&) {
    return http::HttpResponse::Json(200,
                                    nlohmann::json{{"namespaces", ResourceLeaseStats()}}.dump());
  });
  server.Route("GET", "/omnirelay/control/resourcelease/health", [this](const http::HttpRequest&) {
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
  if (config_.grpc) {
    grpc_ = std::make_unique<transport::GrpcInbound>(
        transport::GrpcInboundOptions{.address = config_.grpc->address,
                                      .threads = config_.grpc->threads},
        dispatcher_);
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
  // Backpressure SSE streams hold an admin worker each: give ResourceLease
  // nodes a few.
  admin_ = std::make_unique<http::HttpServer>(http::HttpServerOptions{
      .host = hp->host, .port = hp->port, .threads = config_.resource_lease ? 6 : 1});
  AddAdminRoutes(*admin_);
  if (auto s = admin_->Start(); !s.ok()) return s;
  started_at_ = clock_->Now();
  started_ = true;
  return absl::OkStatus();
}

void Node::Drain() { dispatcher_->Drain(); }

bool Node::WaitIdle(std::chrono::milliseconds timeout) { return dispatcher_->WaitIdle(timeout); }

void Node::Stop() {
  if (stopped_ || !started_) return;
  stopped_ = true;
  dispatcher_->Drain();
  // Parked ResourceLease long polls end now ("no item"), while their
  // transports can still answer them.
  for (auto& [name, queue] : queues_) queue->CancelWaiters();
  if (grpc_) grpc_->Shutdown(std::chrono::milliseconds(500));
  if (http_) http_->Stop();
  if (gateway_) gateway_->Stop();
  dispatcher_->Stop();
  if (backpressure_diag_) backpressure_diag_->Close();  // ends SSE streams
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
    return http::HttpResponse::Json(200, nlohmann::json{{"outbounds", out}}.dump());
  });
  AddResourceLeaseRoutes(server);
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
