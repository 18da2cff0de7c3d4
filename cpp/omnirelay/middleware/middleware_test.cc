#include "omnirelay/middleware/middleware.h"

// GCC 12 reports a false -Wrestrict in std::string assignment at -O3 (GCC bug 105329).
#pragma GCC diagnostic ignored "-Wrestrict"

#include <gtest/gtest.h>

#include <fstream>

namespace omnirelay::middleware {
namespace {

using dispatcher::CallInfo;
using dispatcher::ProcedureKind;
using dispatcher::Request;
using dispatcher::Response;
using dispatcher::UnaryCallback;

Request MakeRequest() {
  Request r;
  r.meta.service = "svc";
  r.meta.procedure = "M";
  return r;
}

// Retries apply only to calls marked idempotent; this one is, by header.
Request IdempotentRequest() {
  Request r = MakeRequest();
  r.meta.headers.Set("rpc-idempotent", "true");
  return r;
}

TEST(RetryMiddlewareTest, RetriesRetryableCodesUntilAttemptsAndStopsBeforeDeadline) {
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  RetryMiddleware retry({.max_attempts = 10,
                         .initial_backoff = std::chrono::milliseconds(100),
                         .max_backoff = std::chrono::milliseconds(100),
                         .multiplier = 1,
                         .jitter = 0,
                         .budget_ratio = 1,
                         .budget_max = 100,
                         .budget_initial = 100},
                        clock, metrics);
  int attempts = 0;
  dispatcher::UnaryHandler failing = [&](Request, UnaryCallback done) {
    ++attempts;
    done(absl::UnavailableError("down"));
  };
  Request request = IdempotentRequest();
  request.meta.deadline = clock->Now() + std::chrono::milliseconds(350);
  std::optional<absl::Status> result;
  retry.HandleUnary(
      CallInfo{.kind = ProcedureKind::kUnary, .outbound = true}, request,
      [&](absl::StatusOr<Response> r) { result = r.status(); }, failing);
  for (int i = 0; i < 10 && !result; ++i) clock->Advance(std::chrono::milliseconds(100));
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(attempts, 4);  // t = 0, 100, 200, 300; 400 would be past the deadline
  EXPECT_EQ(metrics->Total("omnirelay.retry.scheduled"), 3);
  EXPECT_EQ(metrics->Total("omnirelay.retry.exhausted"), 1);
}

TEST(RetryMiddlewareTest, BudgetBoundsRetriesAndNonRetryableCodesAreNotRetried) {
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  RetryMiddleware retry({.max_attempts = 10,
                         .initial_backoff = std::chrono::milliseconds(1),
                         .max_backoff = std::chrono::milliseconds(1),
                         .multiplier = 1,
                         .jitter = 0,
                         .budget_ratio = 0,
                         .budget_max = 2,
                         .budget_initial = 2},
                        clock, metrics);
  int attempts = 0;
  absl::StatusCode code = absl::StatusCode::kUnavailable;
  dispatcher::UnaryHandler failing = [&](Request, UnaryCallback done) {
    ++attempts;
    done(absl::Status(code, "x"));
  };
  for (int call = 0; call < 2; ++call) {
    bool done = false;
    retry.HandleUnary(
        CallInfo{}, IdempotentRequest(), [&](absl::StatusOr<Response>) { done = true; }, failing);
    for (int i = 0; i < 20 && !done; ++i) clock->Advance(std::chrono::milliseconds(1));
    ASSERT_TRUE(done);
  }
  EXPECT_EQ(attempts, 4);  // 1 + 2 retries, then 1 with an empty budget
  code = absl::StatusCode::kInvalidArgument;
  attempts = 0;
  retry.HandleUnary(
      CallInfo{}, IdempotentRequest(), [](absl::StatusOr<Response>) {}, failing);
  EXPECT_EQ(attempts, 1);
}

TEST(RetryMiddlewareTest, OnlyIdempotentCallsAreRetried) {
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  RetryOptions options{.max_attempts = 3,
                       .initial_backoff = std::chrono::milliseconds(1),
                       .max_backoff = std::chrono::milliseconds(1),
                       .jitter = 0,
                       .budget_max = 100,
                       .budget_initial = 100};
  options.idempotent_procedures = {"svc/Get"};
  RetryMiddleware retry(options, clock, metrics);
  int attempts = 0;
  dispatcher::UnaryHandler failing = [&](Request, UnaryCallback done) {
    ++attempts;
    done(absl::UnavailableError("down"));
  };
  auto run = [&](Request request) {
    attempts = 0;
    bool done = false;
    retry.HandleUnary(
        CallInfo{}, std::move(request), [&](absl::StatusOr<Response>) { done = true; }, failing);
    for (int i = 0; i < 20 && !done; ++i) clock->Advance(std::chrono::milliseconds(1));
    EXPECT_TRUE(done);
    return attempts;
  };
  EXPECT_EQ(run(MakeRequest()), 1);  // "svc/M" is not marked: one attempt only
  Request listed = MakeRequest();
  listed.meta.procedure = "Get";
  EXPECT_EQ(run(listed), 3);  // listed in idempotent_procedures
  Request by_header = MakeRequest();
  by_header.meta.headers.Set("Rpc-Idempotent", "TRUE");
  EXPECT_EQ(run(by_header), 3);
  by_header.meta.headers.Set("rpc-idempotent", "false");
  EXPECT_EQ(run(by_header), 1);
}

TEST(RetryMiddlewareTest, BackendResourceExhaustedIsRetriedOnlyWhenConfigured) {
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  RetryOptions options{.max_attempts = 3,
                       .initial_backoff = std::chrono::milliseconds(1),
                       .max_backoff = std::chrono::milliseconds(1),
                       .jitter = 0,
                       .budget_max = 100,
                       .budget_initial = 100};
  int attempts = 0;
  absl::Status failure = absl::ResourceExhaustedError("backend is full");
  dispatcher::UnaryHandler failing = [&](Request, UnaryCallback done) {
    ++attempts;
    done(failure);
  };
  auto run = [&](RetryMiddleware& retry) {
    attempts = 0;
    bool done = false;
    retry.HandleUnary(
        CallInfo{}, IdempotentRequest(), [&](absl::StatusOr<Response>) { done = true; }, failing);
    for (int i = 0; i < 20 && !done; ++i) clock->Advance(std::chrono::milliseconds(1));
    EXPECT_TRUE(done);
    return attempts;
  };
  RetryMiddleware strict(options, clock, metrics);
  EXPECT_EQ(run(strict), 1);  // the backend's own refusal: not retried
  failure = core::MakeStatus(absl::StatusCode::kResourceExhausted, "every peer busy",
                             "peer-pool-exhausted");
  EXPECT_EQ(run(strict), 3);  // our pool was exhausted: no backend acted, retry
  options.retry_resource_exhausted = true;
  RetryMiddleware lenient(options, clock, metrics);
  failure = absl::ResourceExhaustedError("backend is full");
  EXPECT_EQ(run(lenient), 3);
}

TEST(DeadlineMiddlewareTest, ExpiredAndLateCallsEndInDeadlineExceeded) {
  auto clock = std::make_shared<core::ManualClock>();
  DeadlineMiddleware deadline(clock);
  Request request = MakeRequest();
  request.meta.time_to_live = std::chrono::milliseconds(50);
  UnaryCallback held;
  std::optional<absl::StatusCode> code;
  deadline.HandleUnary(
      CallInfo{}, request, [&](absl::StatusOr<Response> r) { code = r.status().code(); },
      [&](Request, UnaryCallback done) { held = std::move(done); });
  EXPECT_FALSE(code.has_value());
  clock->Advance(std::chrono::milliseconds(60));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, absl::StatusCode::kDeadlineExceeded);
  held(Response{});  // the late answer is dropped
  EXPECT_EQ(*code, absl::StatusCode::kDeadlineExceeded);

  Request past = MakeRequest();
  past.meta.deadline = clock->Now() - std::chrono::milliseconds(1);
  bool ran = false;
  deadline.HandleUnary(
      CallInfo{}, past, [&](absl::StatusOr<Response> r) { code = r.status().code(); },
      [&](Request, UnaryCallback done) { ran = true; });
  EXPECT_FALSE(ran);
}

TEST(RateLimitMiddlewareTest, ConcurrencyTokensAndBackpressureMode) {
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  RateLimitMiddleware limiter(
      {.normal = {.max_concurrency = 2, .tokens_per_second = 0, .burst = 0},
       .backpressure = {.max_concurrency = 0, .tokens_per_second = 1, .burst = 1}},
      clock, metrics);
  std::vector<UnaryCallback> held;
  std::vector<absl::StatusCode> codes;
  auto call = [&] {
    limiter.HandleUnary(
        CallInfo{}, MakeRequest(),
        [&](absl::StatusOr<Response> r) { codes.push_back(r.status().code()); },
        [&](Request, UnaryCallback done) { held.push_back(std::move(done)); });
  };
  call();
  call();
  call();
  ASSERT_EQ(codes.size(), 1u);
  EXPECT_EQ(codes[0], absl::StatusCode::kResourceExhausted);
  for (auto& h : held) h(Response{});
  held.clear();
  codes.clear();
  limiter.SetBackpressure(true);
  call();  // takes the only token
  held.back()(Response{});
  call();  // bucket empty
  EXPECT_EQ(codes.back(), absl::StatusCode::kResourceExhausted);
  clock->Advance(std::chrono::seconds(1));
  const size_t rejections = codes.size();
  call();  // refilled: admitted (held by the handler, no answer yet)
  EXPECT_EQ(codes.size(), rejections);
  held.back()(Response{});
  EXPECT_EQ(codes.back(), absl::StatusCode::kOk);
  EXPECT_EQ(metrics->Total("omnirelay.ratelimit.rejected"), 2);
}

TEST(TracingTest, TraceParentRoundTripAndChildSpans) {
  auto parsed = ParseTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(FormatTraceParent(*parsed), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  EXPECT_FALSE(ParseTraceParent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
  EXPECT_FALSE(ParseTraceParent("garbage"));

  auto recorder = std::make_shared<SpanRecorder>();
  TracingMiddleware tracing(recorder, std::make_shared<core::ManualClock>());
  Request request = MakeRequest();
  request.meta.headers.Set("traceparent", FormatTraceParent(*parsed));
  std::string seen;
  tracing.HandleUnary(
      CallInfo{}, request, [](absl::StatusOr<Response>) {},
      [&](Request r, UnaryCallback done) {
        seen = std::string(*r.meta.headers.Get("traceparent"));
        done(Response{});
      });
  auto spans = recorder->ToJson();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0]["traceId"], parsed->trace_id);
  EXPECT_EQ(spans[0]["parentSpanId"], parsed->span_id);
  EXPECT_EQ(seen, "00-" + parsed->trace_id + "-" + spans[0]["spanId"].get<std::string>() + "-01");
}

TEST(PrincipalMiddlewareTest, IdentityHeadersOnlyFromTrustedProxies) {
  auto principal = PrincipalMiddleware::Create({.trusted_proxies = {"10.1.0.0/16", "::1"}});
  ASSERT_TRUE(principal.ok()) << principal.status();
  core::RequestMeta forged;
  forged.peer_address = "192.168.7.7:5000";
  forged.headers.Set("x-client-principal", "admin");
  forged.headers.Set("rpc.principal", "admin");
  (*principal)->Bind(forged);
  EXPECT_FALSE(forged.headers.Contains("rpc.principal"));
  EXPECT_FALSE(forged.headers.Contains("x-client-principal"));  // not passed on either

  core::RequestMeta proxied;
  proxied.peer_address = "10.1.200.3:41000";
  proxied.headers.Set("x-client-principal", "alice");
  (*principal)->Bind(proxied);
  EXPECT_EQ(proxied.headers.Get("rpc.principal"), "alice");
  EXPECT_EQ(proxied.headers.Get("rpc.principal-source"), "proxy");

  core::RequestMeta v6;
  v6.peer_address = "[::1]:41000";
  v6.headers.Set("x-client-cert-subject", "CN=edge");
  (*principal)->Bind(v6);
  EXPECT_EQ(v6.headers.Get("rpc.principal"), "CN=edge");

  EXPECT_FALSE(PrincipalMiddleware::Create({.trusted_proxies = {"10.0.0.0/99"}}).ok());
  EXPECT_FALSE(PrincipalMiddleware::Create({.trusted_proxies = {"proxy.local"}}).ok());
}

TEST(PrincipalMiddlewareTest, BearerTokensMustVerify) {
  const std::string secret_file = ::testing::TempDir() + "/principal-jwt-secret";
  const std::string secret(64, 'k');
  {
    std::ofstream out(secret_file);
    out << secret << "\n";
  }
  auto principal = PrincipalMiddleware::Create({.jwt_secret_file = secret_file});
  ASSERT_TRUE(principal.ok()) << principal.status();

  core::RequestMeta unsigned_token;  // {"alg":"none"}.{"sub":"bob"}.
  unsigned_token.headers.Set("authorization", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ.");
  (*principal)->Bind(unsigned_token);
  EXPECT_FALSE(unsigned_token.headers.Contains("rpc.principal"));

  auth::JwtCodec codec(secret);
  auto token = codec.Issue("carol", "s-1", "user", std::chrono::minutes(5));
  ASSERT_TRUE(token.ok());
  core::RequestMeta signed_token;
  signed_token.headers.Set("authorization", "Bearer " + *token);
  (*principal)->Bind(signed_token);
  EXPECT_EQ(signed_token.headers.Get("rpc.principal"), "carol");
  EXPECT_EQ(signed_token.headers.Get("rpc.principal-source"), "jwt");

  auto missing = PrincipalMiddleware::Create({.jwt_secret_file = secret_file + ".typo"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("omniRelay.principal.jwtSecretFile"),
            std::string::npos);
}

TEST(PrincipalMiddlewareTest, VerifiedClientCertificate) {
  PrincipalMiddleware principal;
  core::RequestMeta meta;
  meta.peer_identity = "spiffe://omnirelay/node-1";
  meta.headers.Set("x-client-principal", "someone-else");
  principal.Bind(meta);
  EXPECT_EQ(meta.headers.Get("rpc.principal"), "spiffe://omnirelay/node-1");
  EXPECT_EQ(meta.headers.Get("rpc.principal-source"), "certificate");
}

}  // namespace
}  // namespace omnirelay::middleware
