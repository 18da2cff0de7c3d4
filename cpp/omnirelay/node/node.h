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
//   GET  /omnirelay/control/lease-health  peer lease health per outbound
//   POST /omnirelay/control/backpressure?mode=normal|backpressure
//
// Drain protocol: Drain() makes new calls fail Unavailable (HTTP 503 +
// retry-after) and /readyz 503; WaitIdle() waits for admitted calls; Stop()
// then closes listeners and outbounds.
//
// Thread-safety: Register before Start from one thread; Start/Drain/Stop
// from one controlling thread; the accessors are thread-safe.
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "omnirelay/config/config.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/dispatcher/dispatcher.h"
#include "omnirelay/dispatcher/echo.h"
#include "omnirelay/gateway/gateway.h"
#include "omnirelay/h2relay/frame_relay.h"
#include "omnirelay/http/http_server.h"
#include "omnirelay/middleware/middleware.h"
#include "omnirelay/transport/grpc_transport.h"
#include "omnirelay/transport/http_transport.h"

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

 private:
  explicit Node(config::NodeConfig config);
  absl::Status Build();
  absl::StatusOr<dispatcher::MiddlewareChain> Chain(const std::vector<std::string>& names,
                                                    const config::OutboundConfig* outbound);
  void AddAdminRoutes(http::HttpServer& server);

  config::NodeConfig config_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<core::MetricsRegistry> metrics_;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::shared_ptr<middleware::SpanRecorder> spans_;
  std::shared_ptr<middleware::RateLimitMiddleware> rate_limiter_;
  std::shared_ptr<dispatcher::EchoStats> echo_stats_;
  std::map<std::string, std::shared_ptr<transport::PeerPool>> pools_;
  std::unique_ptr<transport::GrpcInbound> grpc_;
  std::unique_ptr<transport::HttpInbound> http_;
  std::unique_ptr<http::HttpServer> admin_;
  std::unique_ptr<gateway::Gateway> gateway_;  // gateway mode (config `gateway`)
  // The HTTP/2 frame relay: when any route takes the fast path it owns the
  // configured gRPC address and grpc_ listens on loopback behind it.
  std::vector<h2relay::FrameRoute> frame_routes_;
  std::unique_ptr<h2relay::FrameRelay> relay_;
  core::TimePoint started_at_{};
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace omnirelay::node
