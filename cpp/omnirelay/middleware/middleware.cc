#include "omnirelay/middleware/middleware.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <exception>

#include "omnirelay/auth/secrets.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"

namespace omnirelay::middleware {

namespace metric {
const core::MetricDescriptor kRpcRequests{"omnirelay.rpc.requests", core::MetricKind::kCounter,
                                          "{request}", "RPCs handled or sent"};
const core::MetricDescriptor kRpcSuccesses{"omnirelay.rpc.successes", core::MetricKind::kCounter,
                                           "{request}", "RPCs that ended OK"};
const core::MetricDescriptor kRpcFailures{"omnirelay.rpc.failures", core::MetricKind::kCounter,
                                          "{request}", "RPCs that ended with an error status"};
const core::MetricDescriptor kRpcDuration{"omnirelay.rpc.duration", core::MetricKind::kHistogram,
                                          "ms", "RPC latency from admission to answer"};
const core::MetricDescriptor kRetryScheduled{"omnirelay.retry.scheduled",
                                             core::MetricKind::kCounter, "{retry}",
                                             "Retries scheduled by the retry middleware"};
const core::MetricDescriptor kRetrySucceeded{"omnirelay.retry.succeeded",
                                             core::MetricKind::kCounter, "{request}",
                                             "Calls that succeeded after at least one retry"};
const core::MetricDescriptor kRetryExhausted{
    "omnirelay.retry.exhausted", core::MetricKind::kCounter, "{request}",
    "Calls that failed retryably with no retry left (attempts, budget or deadline)"};
const core::MetricDescriptor kRateLimitRejected{"omnirelay.ratelimit.rejected",
                                                core::MetricKind::kCounter, "{request}",
                                                "Calls rejected by the rate limiter"};
}  // namespace metric

namespace {

std::string ProcedureName(const core::RequestMeta& meta) {
  return meta.service + "/" + meta.procedure;
}

// Calls `done` at most once across threads (deadline timer vs. handler).
struct Once {
  std::atomic<bool> fired{false};
  dispatcher::UnaryCallback done;
  void Fire(absl::StatusOr<dispatcher::Response> result) {
    if (!fired.exchange(true)) done(std::move(result));
  }
};

}  // namespace

// ---------------------------------------------------------------- deadline

void DeadlineMiddleware::HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                                     dispatcher::UnaryCallback done,
                                     const dispatcher::UnaryHandler& next) {
  const auto now = clock_->Now();
  auto deadline = request.meta.EffectiveDeadline(now);
  if (!deadline) {
    next(std::move(request), std::move(done));
    return;
  }
  if (*deadline <= now) {
    done(core::MakeStatus(absl::StatusCode::kDeadlineExceeded,
                          "deadline exceeded before " + ProcedureName(request.meta) + " started",
                          "deadline-exceeded"));
    return;
  }
  request.meta.deadline = deadline;
  auto once = std::make_shared<Once>();
  once->done = std::move(done);
  const std::string name = ProcedureName(request.meta);
  const core::TimerId timer = clock_->ScheduleAt(*deadline, [once, name] {
    once->Fire(core::MakeStatus(absl::StatusCode::kDeadlineExceeded,
                                "deadline exceeded while " + name + " was running",
                                "deadline-exceeded"));
  });
  auto clock = clock_;
  next(std::move(request), [once, timer, clock](absl::StatusOr<dispatcher::Response> result) {
    clock->Cancel(timer);
    once->Fire(std::move(result));
  });
}

absl::Status DeadlineMiddleware::StreamStart(const dispatcher::CallInfo& info,
                                             core::RequestMeta& meta) {
  const auto now = clock_->Now();
  auto deadline = meta.EffectiveDeadline(now);
  if (deadline && *deadline <= now) {
    return core::MakeStatus(absl::StatusCode::kDeadlineExceeded,
                            "deadline exceeded before the stream started", "deadline-exceeded");
  }
  meta.deadline = deadline;
  return absl::OkStatus();
}

// ---------------------------------------------------------------- retry

struct RetryMiddleware::Attempt {
  dispatcher::Request request;
  dispatcher::UnaryCallback done;
  dispatcher::UnaryHandler next;
  std::optional<core::TimePoint> deadline;
  int attempt = 1;
};

RetryMiddleware::RetryMiddleware(RetryOptions options, std::shared_ptr<core::Clock> clock,
                                 std::shared_ptr<core::MetricsRegistry> metrics)
    : options_(options),
      clock_(std::move(clock)),
      metrics_(std::move(metrics)),
      tokens_(options.budget_initial) {}

double RetryMiddleware::budget() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_;
}

bool RetryMiddleware::TakeToken() {
  std::lock_guard<std::mutex> lock(mu_);
  if (tokens_ < 1) return false;
  tokens_ -= 1;
  return true;
}

void RetryMiddleware::Deposit() {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_ = std::min(options_.budget_max, tokens_ + options_.budget_ratio);
}

core::Duration RetryMiddleware::Backoff(int retry) {
  double base = static_cast<double>(options_.initial_backoff.count()) *
                std::pow(options_.multiplier, retry - 1);
  base = std::min(base, static_cast<double>(options_.max_backoff.count()));
  double factor;
  {
    std::lock_guard<std::mutex> lock(mu_);
    factor = 1.0 - options_.jitter * std::uniform_real_distribution<double>(0, 1)(rng_);
  }
  return core::Duration(static_cast<int64_t>(base * factor));
}

bool IsIdempotentCall(const core::RequestMeta& meta, const std::vector<std::string>& procedures) {
  if (auto marked = meta.headers.Get("rpc-idempotent")) {
    std::string value(*marked);
    for (auto& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (value == "true" || value == "1") return true;
  }
  const std::string qualified = meta.service + "/" + meta.procedure;
  for (const auto& name : procedures) {
    if (name == "*" || name == meta.procedure || name == qualified || name == "/" + qualified) {
      return true;
    }
  }
  return false;
}

void RetryMiddleware::HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                                  dispatcher::UnaryCallback done,
                                  const dispatcher::UnaryHandler& next) {
  if (info.kind != dispatcher::ProcedureKind::kUnary || options_.max_attempts <= 1 ||
      !IsIdempotentCall(request.meta, options_.idempotent_procedures)) {
    next(std::move(request), std::move(done));
    return;
  }
  Deposit();
  auto attempt = std::make_shared<Attempt>();
  attempt->deadline = request.meta.EffectiveDeadline(clock_->Now());
  if (attempt->deadline) request.meta.deadline = attempt->deadline;
  attempt->request = std::move(request);
  attempt->done = std::move(done);
  attempt->next = next;
  Run(attempt);
}

void RetryMiddleware::Run(std::shared_ptr<Attempt> attempt) {
  dispatcher::Request copy = attempt->request;  // each attempt sends the same request
  attempt->next(std::move(copy), [this, attempt](absl::StatusOr<dispatcher::Response> result) {
    const core::Tags tags = {{"rpc.service", attempt->request.meta.service},
                             {"rpc.procedure", attempt->request.meta.procedure}};
    if (result.ok()) {
      if (attempt->attempt > 1) metrics_->GetCounter(metric::kRetrySucceeded, tags).Add();
      attempt->done(std::move(result));
      return;
    }
    const absl::StatusCode code = result.status().code();
    // A backend's own RESOURCE_EXHAUSTED says "I am full": retrying adds load
    // to a saturated service. Only our pool's exhaustion (nobody was called)
    // is retried by default.
    const bool backend_exhausted =
        code == absl::StatusCode::kResourceExhausted &&
        core::ErrorCode(result.status()) != std::optional<std::string>("peer-pool-exhausted") &&
        !options_.retry_resource_exhausted;
    if (!core::IsRetryable(code) || backend_exhausted) {
      attempt->done(std::move(result));
      return;
    }
    const core::Duration wait = Backoff(attempt->attempt);
    const auto start_at = clock_->Now() + wait;
    const bool attempts_left = attempt->attempt < options_.max_attempts;
    const bool before_deadline = !attempt->deadline || start_at < *attempt->deadline;
    if (!attempts_left || !before_deadline || !TakeToken()) {
      metrics_->GetCounter(metric::kRetryExhausted, tags).Add();
      attempt->done(std::move(result));
      return;
    }
    metrics_->GetCounter(metric::kRetryScheduled, tags).Add();
    attempt->attempt++;
    clock_->ScheduleAt(start_at, [this, attempt] { Run(attempt); });
  });
}

// ---------------------------------------------------------------- rate limit

RateLimitMiddleware::RateLimitMiddleware(RateLimitOptions options,
                                         std::shared_ptr<core::Clock> clock,
                                         std::shared_ptr<core::MetricsRegistry> metrics)
    : options_(options), clock_(std::move(clock)), metrics_(std::move(metrics)) {}

absl::Status RateLimitMiddleware::Admit(const core::RequestMeta& meta) {
  const bool bp = backpressure_.load();
  const RateLimitProfile& p = bp ? options_.backpressure : options_.normal;
  auto reject = [&](std::string why) {
    rejected_.fetch_add(1);
    metrics_
        ->GetCounter(metric::kRateLimitRejected,
                     {{"rpc.service", meta.service},
                      {"rpc.procedure", meta.procedure},
                      {"ratelimit.mode", bp ? "backpressure" : "normal"}})
        .Add();
    return core::MakeStatus(absl::StatusCode::kResourceExhausted, why, "rate-limited");
  };
  const int64_t now_in = in_flight_.fetch_add(1) + 1;
  if (p.max_concurrency > 0 && now_in > p.max_concurrency) {
    in_flight_.fetch_sub(1);
    return reject("concurrency limit " + std::to_string(p.max_concurrency) + " reached");
  }
  if (p.tokens_per_second > 0) {
    std::lock_guard<std::mutex> lock(bucket_mu_);
    const double burst = p.burst > 0 ? p.burst : p.tokens_per_second;
    const auto now = clock_->Now();
    if (tokens_ < 0) {
      tokens_ = burst;
    } else {
      const double elapsed = std::chrono::duration<double>(now - refilled_).count();
      tokens_ = std::min(burst, tokens_ + elapsed * p.tokens_per_second);
    }
    refilled_ = now;
    if (tokens_ < 1) {
      in_flight_.fetch_sub(1);
      return reject("token bucket empty (" + std::to_string(p.tokens_per_second) + "/s)");
    }
    tokens_ -= 1;
  }
  return absl::OkStatus();
}

void RateLimitMiddleware::HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                                      dispatcher::UnaryCallback done,
                                      const dispatcher::UnaryHandler& next) {
  if (auto status = Admit(request.meta); !status.ok()) {
    done(status);
    return;
  }
  next(std::move(request), [this, done = std::move(done)](absl::StatusOr<dispatcher::Response> r) {
    Leave();
    done(std::move(r));
  });
}

absl::Status RateLimitMiddleware::StreamStart(const dispatcher::CallInfo& info,
                                              core::RequestMeta& meta) {
  return Admit(meta);
}

void RateLimitMiddleware::StreamEnd(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                                    const absl::Status& status) {
  Leave();
}

nlohmann::json RateLimitMiddleware::Snapshot() const {
  return {{"mode", backpressure() ? "backpressure" : "normal"},
          {"inFlight", in_flight_.load()},
          {"rejected", rejected_.load()}};
}

// ---------------------------------------------------------------- principal

namespace {

// "a.b.c.d", "[::1]", "::1" (optionally with ":port", or "/prefix" when
// `allow_prefix`) -> network; nullopt when it does not parse.
bool ParseAddress(std::string_view text, bool allow_prefix, std::array<unsigned char, 16>& out,
                  int& family, int& prefix) {
  std::string host(text);
  prefix = -1;
  if (allow_prefix) {
    if (auto slash = host.find('/'); slash != std::string::npos) {
      const std::string bits = host.substr(slash + 1);
      if (bits.empty() || bits.size() > 3 ||
          bits.find_first_not_of("0123456789") != std::string::npos) {
        return false;
      }
      prefix = std::stoi(bits);
      host = host.substr(0, slash);
    }
  }
  if (!host.empty() && host.front() == '[') {  // [v6]:port
    const auto close = host.find(']');
    if (close == std::string::npos) return false;
    host = host.substr(1, close - 1);
  } else if (std::count(host.begin(), host.end(), ':') == 1) {  // v4:port
    host = host.substr(0, host.find(':'));
  }
  out.fill(0);
  if (::inet_pton(AF_INET, host.c_str(), out.data()) == 1) {
    family = AF_INET;
    if (prefix < 0) prefix = 32;
    return prefix <= 32;
  }
  if (::inet_pton(AF_INET6, host.c_str(), out.data()) == 1) {
    family = AF_INET6;
    if (prefix < 0) prefix = 128;
    return prefix <= 128;
  }
  return false;
}

}  // namespace

absl::StatusOr<std::shared_ptr<PrincipalMiddleware>> PrincipalMiddleware::Create(
    PrincipalOptions options) {
  auto middleware = std::make_shared<PrincipalMiddleware>();
  for (size_t i = 0; i < options.trusted_proxies.size(); ++i) {
    Network network;
    if (!ParseAddress(options.trusted_proxies[i], /*allow_prefix=*/true, network.address,
                      network.family, network.prefix)) {
      return absl::InvalidArgumentError("omniRelay.principal.trustedProxies[" + std::to_string(i) +
                                        "]: '" + options.trusted_proxies[i] +
                                        "' is not an IP address or CIDR");
    }
    middleware->trusted_.push_back(network);
  }
  if (!options.jwt_secret_file.empty()) {
    auto secret = auth::LoadSecret(options.jwt_secret_file);
    if (!secret.ok()) {
      return absl::InvalidArgumentError("omniRelay.principal.jwtSecretFile: " +
                                        std::string(secret.status().message()));
    }
    middleware->codec_ = std::make_shared<const auth::JwtCodec>(std::move(*secret));
  }
  return middleware;
}

bool PrincipalMiddleware::IsTrustedProxy(std::string_view peer_address) const {
  if (trusted_.empty() || peer_address.empty()) return false;
  std::array<unsigned char, 16> address{};
  int family = 0;
  int unused = 0;
  if (!ParseAddress(peer_address, /*allow_prefix=*/false, address, family, unused)) return false;
  for (const auto& network : trusted_) {
    if (network.family != family) continue;
    int bits = network.prefix;
    bool match = true;
    for (size_t i = 0; bits > 0 && match; ++i, bits -= 8) {
      const unsigned char mask = bits >= 8 ? 0xff : static_cast<unsigned char>(0xff << (8 - bits));
      match = (address[i] & mask) == (network.address[i] & mask);
    }
    if (match) return true;
  }
  return false;
}

void PrincipalMiddleware::Bind(core::RequestMeta& meta) const {
  // Only this middleware speaks for who the caller is.
  meta.headers.Remove("rpc.principal");
  meta.headers.Remove("rpc.principal-source");
  std::string principal;
  std::string source;
  if (IsTrustedProxy(meta.peer_address)) {
    if (auto v = meta.headers.Get("x-client-principal"); v && !v->empty()) {
      principal = std::string(*v);
    } else if (auto subject = meta.headers.Get("x-client-cert-subject");
               subject && !subject->empty()) {
      principal = std::string(*subject);
    }
    if (!principal.empty()) source = "proxy";
  } else {
    // Untrusted identity headers are dropped so no later hop mistakes them
    // for ours.
    meta.headers.Remove("x-client-principal");
    meta.headers.Remove("x-client-cert-subject");
  }
  if (principal.empty() && codec_) {
    if (auto auth = meta.headers.Get("authorization");
        auth && auth->size() > 7 &&
        (auth->starts_with("Bearer ") || auth->starts_with("bearer "))) {
      if (auto claims = codec_->Verify(auth->substr(7)); claims.ok()) {
        principal = claims->username;
        source = "jwt";
      }
    }
  }
  if (principal.empty() && !meta.peer_identity.empty()) {
    principal = meta.peer_identity;
    source = "certificate";
  }
  if (principal.empty()) return;
  meta.headers.Set("rpc.principal", principal);
  meta.headers.Set("rpc.principal-source", source);
  // The next hop trusts this node as its proxy (when configured so).
  meta.headers.Set("x-client-principal", principal);
}

void PrincipalMiddleware::HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                                      dispatcher::UnaryCallback done,
                                      const dispatcher::UnaryHandler& next) {
  Bind(request.meta);
  next(std::move(request), std::move(done));
}

absl::Status PrincipalMiddleware::StreamStart(const dispatcher::CallInfo& info,
                                              core::RequestMeta& meta) {
  Bind(meta);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- tracing

std::string RandomHex(size_t bytes) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (size_t i = 0; i < bytes; ++i) {
    auto b = static_cast<unsigned>(rng() & 0xFF);
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 0xF]);
  }
  return out;
}

std::optional<TraceParent> ParseTraceParent(std::string_view h) {
  // 00-<32 hex>-<16 hex>-<2 hex>
  if (h.size() < 55 || h[2] != '-' || h[35] != '-' || h[52] != '-') return std::nullopt;
  auto hex = [](std::string_view s) {
    return s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
  };
  TraceParent p{std::string(h.substr(3, 32)), std::string(h.substr(36, 16)),
                std::string(h.substr(53, 2))};
  if (!hex(p.trace_id) || !hex(p.span_id) || !hex(p.flags)) return std::nullopt;
  if (p.trace_id == std::string(32, '0') || p.span_id == std::string(16, '0')) return std::nullopt;
  return p;
}

std::string FormatTraceParent(const TraceParent& p) {
  return "00-" + p.trace_id + "-" + p.span_id + "-" + p.flags;
}

nlohmann::json Span::ToJson() const {
  auto ns = [](core::TimePoint t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  };
  nlohmann::json out = {{"traceId", trace_id},
                        {"spanId", span_id},
                        {"parentSpanId", parent_span_id},
                        {"name", name},
                        {"kind", kind},
                        {"status", status},
                        {"startTimeUnixNano", ns(start)},
                        {"endTimeUnixNano", ns(end)}};
  if (!attributes.empty()) out["attributes"] = attributes;
  return out;
}

void SpanRecorder::Record(Span span) {
  std::lock_guard<std::mutex> lock(mu_);
  spans_.push_back(std::move(span));
  while (spans_.size() > capacity_) spans_.pop_front();
}

nlohmann::json SpanRecorder::ToJson() const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : spans_) out.push_back(s.ToJson());
  return out;
}

size_t SpanRecorder::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spans_.size();
}

Span TracingMiddleware::Begin(const dispatcher::CallInfo& info, core::RequestMeta& meta) {
  Span span;
  TraceParent next;
  if (auto incoming = meta.headers.Get("traceparent")) {
    if (auto parsed = ParseTraceParent(*incoming)) {
      span.trace_id = parsed->trace_id;
      span.parent_span_id = parsed->span_id;
      next.flags = parsed->flags;
    }
  }
  if (span.trace_id.empty()) span.trace_id = RandomHex(16);
  span.span_id = RandomHex(8);
  span.name = ProcedureName(meta);
  span.kind = info.outbound ? "client" : "server";
  if (meta.service == "resourcelease" || meta.service.starts_with("resourcelease.")) {
    span.attributes["resourcelease.operation"] = meta.procedure;
    if (meta.service.size() > 14) span.attributes["shard.id"] = meta.service.substr(14);
  }
  span.start = clock_->Now();
  next.trace_id = span.trace_id;
  next.span_id = span.span_id;
  meta.headers.Set("traceparent", FormatTraceParent(next));
  return span;
}

void TracingMiddleware::HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                                    dispatcher::UnaryCallback done,
                                    const dispatcher::UnaryHandler& next) {
  auto span = std::make_shared<Span>(Begin(info, request.meta));
  next(std::move(request),
       [this, span, done = std::move(done)](absl::StatusOr<dispatcher::Response> result) {
         span->end = clock_->Now();
         span->status = std::string(core::StatusCodeName(result.status().code()));
         recorder_->Record(*span);
         done(std::move(result));
       });
}

absl::Status TracingMiddleware::StreamStart(const dispatcher::CallInfo& info,
                                            core::RequestMeta& meta) {
  Span span = Begin(info, meta);
  // The span is finished in StreamEnd; keep its start in a header of the meta.
  meta.headers.Set("x-omnirelay-internal-span-start",
                   std::to_string(span.start.time_since_epoch().count()));
  meta.headers.Set("x-omnirelay-internal-parent-span", span.parent_span_id);
  return absl::OkStatus();
}

void TracingMiddleware::StreamEnd(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                                  const absl::Status& status) {
  auto tp = ParseTraceParent(meta.headers.Get("traceparent").value_or(""));
  if (!tp) return;
  Span span;
  span.trace_id = tp->trace_id;
  span.span_id = tp->span_id;
  span.parent_span_id =
      std::string(meta.headers.Get("x-omnirelay-internal-parent-span").value_or(""));
  span.name = ProcedureName(meta);
  span.kind = info.outbound ? "client" : "server";
  span.status = std::string(core::StatusCodeName(status.code()));
  int64_t start = 0;
  if (auto s = meta.headers.Get("x-omnirelay-internal-span-start"))
    start = std::atoll(std::string(*s).c_str());
  span.start = core::TimePoint(core::TimePoint::duration(start));
  span.end = clock_->Now();
  recorder_->Record(std::move(span));
}

// ---------------------------------------------------------------- metrics

void RpcMetricsMiddleware::Observe(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                                   const absl::Status& status, double millis) {
  core::Tags tags = {{"rpc.service", meta.service},
                     {"rpc.procedure", meta.procedure},
                     {"rpc.transport", meta.transport.empty() ? "unknown" : meta.transport},
                     {"rpc.direction", info.outbound ? "outbound" : "inbound"}};
  metrics_->GetCounter(metric::kRpcRequests, tags).Add();
  tags["rpc.status"] = std::string(core::StatusCodeName(status.code()));
  metrics_->GetCounter(status.ok() ? metric::kRpcSuccesses : metric::kRpcFailures, tags).Add();
  metrics_->GetHistogram(metric::kRpcDuration, tags).Record(millis);
}

void RpcMetricsMiddleware::HandleUnary(const dispatcher::CallInfo& info,
                                       dispatcher::Request request, dispatcher::UnaryCallback done,
                                       const dispatcher::UnaryHandler& next) {
  const auto start = clock_->Now();
  auto meta = std::make_shared<core::RequestMeta>();
  meta->service = request.meta.service;
  meta->procedure = request.meta.procedure;
  meta->transport = request.meta.transport;
  next(std::move(request), [this, info, meta, start,
                            done = std::move(done)](absl::StatusOr<dispatcher::Response> result) {
    const double ms = std::chrono::duration<double, std::milli>(clock_->Now() - start).count();
    Observe(info, *meta, result.status(), ms);
    done(std::move(result));
  });
}

absl::Status RpcMetricsMiddleware::StreamStart(const dispatcher::CallInfo& info,
                                               core::RequestMeta& meta) {
  meta.headers.Set("x-omnirelay-internal-metrics-start",
                   std::to_string(clock_->Now().time_since_epoch().count()));
  return absl::OkStatus();
}

void RpcMetricsMiddleware::StreamEnd(const dispatcher::CallInfo& info,
                                     const core::RequestMeta& meta, const absl::Status& status) {
  double ms = 0;
  if (auto start = meta.headers.Get("x-omnirelay-internal-metrics-start")) {
    const core::TimePoint t(core::TimePoint::duration(std::atoll(std::string(*start).c_str())));
    ms = std::chrono::duration<double, std::milli>(clock_->Now() - t).count();
  }
  Observe(info, meta, status, ms);
}

// ---------------------------------------------------------------- logging

void LoggingMiddleware::HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                                    dispatcher::UnaryCallback done,
                                    const dispatcher::UnaryHandler& next) {
  const bool debug = core::LogEnabled(core::LogLevel::kDebug);
  std::string name = ProcedureName(request.meta);
  next(std::move(request), [info, debug, name = std::move(name),
                            done = std::move(done)](absl::StatusOr<dispatcher::Response> result) {
    if (!result.ok()) {
      core::LogWarn("rpc.failed",
                    {{"procedure", name},
                     {"direction", info.outbound ? "outbound" : "inbound"},
                     {"status", std::string(core::StatusCodeName(result.status().code()))},
                     {"message", std::string(core::FromAbsl(result.status().message()))}});
    } else if (debug) {
      core::Log(core::LogLevel::kDebug, "rpc.ok", {{"procedure", name}});
    }
    done(std::move(result));
  });
}

void LoggingMiddleware::StreamEnd(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                                  const absl::Status& status) {
  if (!status.ok()) {
    core::LogWarn("rpc.failed", {{"procedure", ProcedureName(meta)},
                                 {"status", std::string(core::StatusCodeName(status.code()))}});
  }
}

// ---------------------------------------------------------------- recovery

void RecoveryMiddleware::HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                                     dispatcher::UnaryCallback done,
                                     const dispatcher::UnaryHandler& next) {
  auto once = std::make_shared<Once>();
  once->done = std::move(done);
  try {
    next(std::move(request),
         [once](absl::StatusOr<dispatcher::Response> result) { once->Fire(std::move(result)); });
  } catch (const std::exception& error) {
    once->Fire(absl::InternalError(std::string("handler threw: ") + error.what()));
  } catch (...) {
    once->Fire(absl::InternalError("handler threw a non-standard exception"));
  }
}

}  // namespace omnirelay::middleware
