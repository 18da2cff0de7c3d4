#pragma once
// The middleware OmniRelay ships, each a dispatcher::Middleware usable in an
// inbound or outbound chain (the node builds chains from the `middleware`
// section of the configuration; see docs/configuration.md).
//
// Recommended inbound order: recovery, tracing, metrics, logging, principal,
// deadline, rate-limit. Outbound: tracing, metrics, retry, deadline.
//
// Thread-safety: every middleware is shared by all calls and thread-safe.
#include <array>
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "omnirelay/auth/jwt.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/dispatcher/middleware.h"

namespace omnirelay::middleware {

namespace metric {
extern const core::MetricDescriptor kRpcRequests;
extern const core::MetricDescriptor kRpcSuccesses;
extern const core::MetricDescriptor kRpcFailures;
extern const core::MetricDescriptor kRpcDuration;
extern const core::MetricDescriptor kRetryScheduled;
extern const core::MetricDescriptor kRetrySucceeded;
extern const core::MetricDescriptor kRetryExhausted;
extern const core::MetricDescriptor kRateLimitRejected;
}  // namespace metric

// Deadline/TTL enforcement: a call whose effective deadline has passed fails
// DeadlineExceeded before the handler runs; a call still running at its
// deadline is answered DeadlineExceeded (the late result is dropped). Sets
// meta.deadline to the effective deadline so later hops see one value.
class DeadlineMiddleware final : public dispatcher::Middleware {
 public:
  explicit DeadlineMiddleware(std::shared_ptr<core::Clock> clock) : clock_(std::move(clock)) {}
  std::string_view name() const override { return "deadline"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
  absl::Status StreamStart(const dispatcher::CallInfo& info, core::RequestMeta& meta) override;

 private:
  std::shared_ptr<core::Clock> clock_;
};

// Retry for idempotent unary calls (outbound chains).
//   Only calls marked idempotent are retried: the procedure is listed in
//   `idempotent_procedures` ("Method", "service/Method" or "*"), or the call
//   carries `rpc-idempotent: true`; anything else gets exactly one attempt.
//   attempt k (k >= 1) waits min(initial * multiplier^(k-1), max) scaled by a
//   uniform jitter in [1 - jitter, 1]; only core::IsRetryable codes are
//   retried, and RESOURCE_EXHAUSTED only when no backend acted on the call
//   (the local peer pool was exhausted, error code "peer-pool-exhausted")
//   unless `retry_resource_exhausted` allows a backend's own refusal too; a retry is never
//   scheduled if it would start at or after the call's effective deadline; each retry spends one
//   token of a budget that every first attempt refills by `budget_ratio` (at most `budget_max`
//   tokens), so retries stay a bounded fraction of traffic under failure.
struct RetryOptions {
  int max_attempts = 3;  // including the first
  core::Duration initial_backoff = std::chrono::milliseconds(10);
  core::Duration max_backoff = std::chrono::milliseconds(1000);
  double multiplier = 2.0;
  double jitter = 0.2;
  double budget_ratio = 0.2;
  double budget_max = 10;
  double budget_initial = 10;
  std::vector<std::string> idempotent_procedures = {};
  bool retry_resource_exhausted = false;
};

// True when `meta` names an idempotent call per the rules above.
bool IsIdempotentCall(const core::RequestMeta& meta, const std::vector<std::string>& procedures);

class RetryMiddleware final : public dispatcher::Middleware {
 public:
  RetryMiddleware(RetryOptions options, std::shared_ptr<core::Clock> clock,
                  std::shared_ptr<core::MetricsRegistry> metrics);
  std::string_view name() const override { return "retry"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
  double budget() const;

 private:
  struct Attempt;
  void Run(std::shared_ptr<Attempt> attempt);
  bool TakeToken();
  void Deposit();
  core::Duration Backoff(int retry);

  const RetryOptions options_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<core::MetricsRegistry> metrics_;
  mutable std::mutex mu_;
  double tokens_;
  std::mt19937_64 rng_{0x5eed};
};

// Concurrency + token-bucket limiter with two profiles, switchable at run
// time (normal / backpressure), e.g. by a backpressure listener or the admin
// endpoint. Rejection is ResourceExhausted ("rate-limited").
struct RateLimitProfile {
  int max_concurrency = 0;       // 0 = unlimited
  double tokens_per_second = 0;  // 0 = no token bucket
  double burst = 0;              // bucket size (default: tokens_per_second)
};
struct RateLimitOptions {
  RateLimitProfile normal;
  RateLimitProfile backpressure{.max_concurrency = 1, .tokens_per_second = 0, .burst = 0};
};

class RateLimitMiddleware final : public dispatcher::Middleware {
 public:
  RateLimitMiddleware(RateLimitOptions options, std::shared_ptr<core::Clock> clock,
                      std::shared_ptr<core::MetricsRegistry> metrics);
  std::string_view name() const override { return "rate-limit"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
  absl::Status StreamStart(const dispatcher::CallInfo& info, core::RequestMeta& meta) override;
  void StreamEnd(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                 const absl::Status& status) override;

  void SetBackpressure(bool on) { backpressure_.store(on); }
  bool backpressure() const { return backpressure_.load(); }
  nlohmann::json Snapshot() const;

 private:
  absl::Status Admit(const core::RequestMeta& meta);
  void Leave() { in_flight_.fetch_sub(1); }

  const RateLimitOptions options_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<core::MetricsRegistry> metrics_;
  std::atomic<bool> backpressure_{false};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> rejected_{0};
  std::mutex bucket_mu_;
  double tokens_ = -1;
  core::TimePoint refilled_{};
};

// Principal binding: sets header `rpc.principal` (and `x-client-principal`
// for the next hop) from, in order:
//   1. `x-client-principal` / `x-client-cert-subject`, only when the call
//      comes from a trusted proxy (RequestMeta::peer_address within
//      `trusted_proxies`); from anyone else these headers are dropped;
//   2. a bearer JWT verified with `jwt_secret_file` (HS256, auth::JwtCodec):
//      its `sub`;
//   3. the verified TLS client certificate (RequestMeta::peer_identity, the
//      URI/DNS SAN or "sha256:<thumbprint>").
// A client-sent `rpc.principal` is always discarded. `rpc.principal-source`
// says which rule bound it (proxy | jwt | certificate).
struct PrincipalOptions {
  std::vector<std::string> trusted_proxies{};  // "127.0.0.1", "10.0.0.0/8", "::1"
  std::string jwt_secret_file{};               // "" = bearer tokens bind nothing
};

class PrincipalMiddleware final : public dispatcher::Middleware {
 public:
  // INVALID_ARGUMENT naming the bad proxy entry or unreadable secret file.
  static absl::StatusOr<std::shared_ptr<PrincipalMiddleware>> Create(PrincipalOptions options);
  PrincipalMiddleware() = default;  // trusts no proxy, verifies no JWT

  std::string_view name() const override { return "principal"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
  absl::Status StreamStart(const dispatcher::CallInfo& info, core::RequestMeta& meta) override;
  void Bind(core::RequestMeta& meta) const;
  bool IsTrustedProxy(std::string_view peer_address) const;

 private:
  struct Network {
    std::array<unsigned char, 16> address{};
    int family = 0;  // AF_INET | AF_INET6
    int prefix = 0;
  };
  std::vector<Network> trusted_;
  std::shared_ptr<const auth::JwtCodec> codec_;
};

// A finished span, exportable as JSON (OTLP-like field names).
struct Span {
  std::string trace_id;
  std::string span_id;
  std::string parent_span_id;
  std::string name;  // "service/procedure"
  std::string kind;  // "server" | "client"
  std::string status;
  core::TimePoint start;
  core::TimePoint end;
  // Span attributes, e.g. `resourcelease.operation` = "lease" on calls of a
  // ResourceLease queue (seed: traces show queue operations).
  std::map<std::string, std::string> attributes;
  nlohmann::json ToJson() const;
};

// Bounded in-memory span store (newest kept).
class SpanRecorder {
 public:
  explicit SpanRecorder(size_t capacity = 4096) : capacity_(capacity) {}
  void Record(Span span);
  nlohmann::json ToJson() const;
  size_t size() const;

 private:
  mutable std::mutex mu_;
  size_t capacity_;
  std::deque<Span> spans_;
};

// W3C trace context: continues the caller's `traceparent` (or starts a new
// trace), records one span per call, and rewrites `traceparent` to this
// span so the next hop (outbound, relay) becomes its child.
class TracingMiddleware final : public dispatcher::Middleware {
 public:
  TracingMiddleware(std::shared_ptr<SpanRecorder> recorder, std::shared_ptr<core::Clock> clock)
      : recorder_(std::move(recorder)), clock_(std::move(clock)) {}
  std::string_view name() const override { return "tracing"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
  absl::Status StreamStart(const dispatcher::CallInfo& info, core::RequestMeta& meta) override;
  void StreamEnd(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                 const absl::Status& status) override;

 private:
  Span Begin(const dispatcher::CallInfo& info, core::RequestMeta& meta);
  std::shared_ptr<SpanRecorder> recorder_;
  std::shared_ptr<core::Clock> clock_;
};

// omnirelay.rpc.requests/.successes/.failures (counters) and .duration
// (histogram, ms), tagged rpc.service, rpc.procedure, rpc.transport,
// rpc.status (+ rpc.direction inbound/outbound).
class RpcMetricsMiddleware final : public dispatcher::Middleware {
 public:
  RpcMetricsMiddleware(std::shared_ptr<core::MetricsRegistry> metrics,
                       std::shared_ptr<core::Clock> clock)
      : metrics_(std::move(metrics)), clock_(std::move(clock)) {}
  std::string_view name() const override { return "metrics"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
  absl::Status StreamStart(const dispatcher::CallInfo& info, core::RequestMeta& meta) override;
  void StreamEnd(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                 const absl::Status& status) override;
  void Observe(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
               const absl::Status& status, double millis);

 private:
  std::shared_ptr<core::MetricsRegistry> metrics_;
  std::shared_ptr<core::Clock> clock_;
};

// One JSON log line per failed call (warn) and, at debug level, per call.
class LoggingMiddleware final : public dispatcher::Middleware {
 public:
  std::string_view name() const override { return "logging"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
  void StreamEnd(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                 const absl::Status& status) override;
};

// Turns an exception escaping a handler (Python procedures, third-party
// code) into Internal instead of a dead process.
class RecoveryMiddleware final : public dispatcher::Middleware {
 public:
  std::string_view name() const override { return "recovery"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
};

// W3C traceparent helpers (exposed for tests).
struct TraceParent {
  std::string trace_id;  // 32 hex
  std::string span_id;   // 16 hex
  std::string flags = "01";
};
std::optional<TraceParent> ParseTraceParent(std::string_view header);
std::string FormatTraceParent(const TraceParent& parent);
std::string RandomHex(size_t bytes);

}  // namespace omnirelay::middleware
