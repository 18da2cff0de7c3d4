#include "omnirelay/node/node.h"

#include <openssl/crypto.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "omnirelay/core/logging.h"

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

absl::Status Node::Build() {
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
  if (config_.grpc) {
    grpc_ = std::make_unique<transport::GrpcInbound>(
        transport::GrpcInboundOptions{
            .address = config_.grpc->address, .threads = config_.grpc->threads, .tls = tls_},
        dispatcher_);
    if (auto s = grpc_->Start(); !s.ok()) return s;
  }
  std::shared_ptr<tls::ContextSource> server_tls;
  if (tls_) {
    auto source = tls::ContextSource::Create(*tls_, tls::Role::kServer);
    if (!source.ok()) return WithKeyPath("omniRelay.tls", source.status());
    server_tls = *source;
  }
  if (config_.http) {
    http_ = std::make_unique<transport::HttpInbound>(
        transport::HttpInboundOptions{.address = config_.http->address,
                                      .threads = std::max(4, config_.http->threads),
                                      .tls = server_tls},
        dispatcher_);
    if (auto s = http_->Start(); !s.ok()) return s;
  }
  if (config_.gateway) {
    auto gateway = gateway::Gateway::Create(*config_.gateway, metrics_, tls_);
    if (!gateway.ok()) return gateway.status();
    gateway_ = std::move(*gateway);
    if (auto s = gateway_->Start(); !s.ok()) return s;
  }
  auto hp = transport::ParseHostPort(config_.admin_address);
  if (!hp.ok()) return hp.status();
  admin_ = std::make_unique<http::HttpServer>(
      http::HttpServerOptions{.host = hp->host,
                              .port = hp->port,
                              .threads = 1,
                              .tls = config_.admin.tls ? server_tls : nullptr});
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
  out["config"] = config::ToJson(config_);
  return out;
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
  server.Route("GET", "/metrics",
               Guard(
                   [this](const http::HttpRequest&) {
                     auto response = http::HttpResponse::Text(200, metrics_->RenderPrometheus());
                     response.content_type = "text/plain; version=0.0.4; charset=utf-8";
                     return response;
                   },
                   false));
  server.Route("GET", "/omnirelay/introspect",
               Guard(
                   [this](const http::HttpRequest&) {
                     return http::HttpResponse::Json(200, Introspect().dump());
                   },
                   false));
  server.Route("GET", "/omnirelay/traces",
               Guard(
                   [this](const http::HttpRequest&) {
                     return http::HttpResponse::Json(
                         200, nlohmann::json{{"spans", spans_->ToJson()}}.dump());
                   },
                   false));
  server.Route("GET", "/omnirelay/echo/stats",
               Guard(
                   [this](const http::HttpRequest&) {
                     if (!echo_stats_)
                       return http::HttpResponse::Json(404, R"({"error":"echo is not enabled"})");
                     return http::HttpResponse::Json(200, echo_stats_->ToJson().dump());
                   },
                   false));
  server.Route("GET", "/omnirelay/gateway",
               Guard(
                   [this](const http::HttpRequest&) {
                     if (!gateway_)
                       return http::HttpResponse::Json(404,
                                                       R"({"error":"gateway is not configured"})");
                     return http::HttpResponse::Json(200, gateway_->Introspect().dump());
                   },
                   false));
  server.Route(
      "GET", "/omnirelay/control/lease-health",
      Guard(
          [this](const http::HttpRequest&) {
            nlohmann::json out = nlohmann::json::object();
            for (const auto& [name, pool] : pools_) {
              auto health = pool->LeaseHealth();
              out[name] = health.is_null() ? pool->Snapshot() : health;
            }
            return http::HttpResponse::Json(200, nlohmann::json{{"outbounds", out}}.dump());
          },
          false));
  server.Route("POST", "/omnirelay/control/backpressure",
               Guard(
                   [this](const http::HttpRequest& request) {
                     if (!rate_limiter_) {
                       return http::HttpResponse::Json(
                           404, R"({"error":"rate limiting is not configured"})");
                     }
                     const std::string mode = request.QueryParam("mode").value_or("");
                     if (mode != "normal" && mode != "backpressure") {
                       return http::HttpResponse::Json(
                           400, R"({"error":"mode must be normal or backpressure"})");
                     }
                     rate_limiter_->SetBackpressure(mode == "backpressure");
                     return http::HttpResponse::Json(200, rate_limiter_->Snapshot().dump());
                   },
                   true));
}

}  // namespace omnirelay::node
