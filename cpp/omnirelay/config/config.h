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
};

struct OutboundConfig {
  std::string name;
  std::string transport = "grpc";  // grpc | http
  std::string service;
  std::string procedure;
  std::vector<std::string> endpoints;
  std::string peer_chooser = "fewest-pending";
  int max_in_flight_per_peer = 0;  // 0 = unlimited
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
};

// Gateway mode (issue 6, docs/session-gateway.md "Gateway mode"): a gRPC
// listener that forwards calls byte for byte to clusters chosen by method
// prefix, with per-route JWT verification and sticky-with-occupancy routing.
struct GatewayClusterConfig {
  std::string name;
  std::vector<std::string> endpoints;  // static members ("host:port"), or
  std::string registry;                // the HTTP instance registry "host:port"
  std::string role;                    // registry role filter ("" = every role)
  core::Duration refresh_interval = std::chrono::seconds(1);
};

struct GatewayRouteConfig {
  std::string prefix;  // matched against "/pkg.Service/Method"
  std::string cluster;
  std::string authorization = "none";    // none | required (JWT, auth::VerifyRequest)
  std::string balancer = "round-robin";  // round-robin | sticky
  std::string sticky_header = "session-id";
};

struct GatewayDefaultRouteConfig {
  std::string error = "UNIMPLEMENTED";  // gRPC code name, when `cluster` is empty
  std::string cluster;                  // forward unmatched calls there (round-robin)
};

struct GatewayConfig {
  std::string address;  // "host:port" of the gateway's gRPC listener
  std::string jwt_secret_file;
  std::map<std::string, GatewayClusterConfig> clusters;
  std::vector<GatewayRouteConfig> routes;
  GatewayDefaultRouteConfig default_route;
  int max_attempts = 3;
  core::Duration attempt_timeout = std::chrono::seconds(2);
};

// gRPC status code names ("OK", "CANCELLED", ..., "UNAUTHENTICATED").
const std::vector<std::string>& StatusCodeNames();

struct NodeConfig {
  std::string service = "omnirelay";
  std::optional<InboundConfig> grpc;
  std::optional<InboundConfig> http;
  std::string admin_address = "127.0.0.1:9901";
  std::map<std::string, OutboundConfig> outbounds;
  std::vector<RouteConfig> routes;
  MiddlewareConfig middleware;
  EchoConfig echo;
  std::optional<GatewayConfig> gateway;
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

}  // namespace omnirelay::config
