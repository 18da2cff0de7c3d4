#include "omnirelay/dispatcher/dispatcher.h"

#include <gtest/gtest.h>

#include "omnirelay/dispatcher/json_procedure.h"

namespace omnirelay::dispatcher {
namespace {

Procedure Unary(std::string name, std::string reply, std::vector<std::string> aliases = {}) {
  Procedure p;
  p.service = "svc";
  p.name = std::move(name);
  p.aliases = std::move(aliases);
  p.unary = [reply](Request, UnaryCallback done) { done(Response{.headers = {}, .body = reply}); };
  return p;
}

class FakeOutbound final : public Outbound {
 public:
  std::string_view transport() const override { return "fake"; }
  void CallUnary(Request request, UnaryCallback done) override {
    done(Response{.headers = {},
                  .body = "forwarded:" + request.meta.service + "/" + request.meta.procedure});
  }
  nlohmann::json Snapshot() const override { return {{"peers", nlohmann::json::array()}}; }
};

std::string CallBody(const Dispatcher& d, std::string_view service, std::string_view name) {
  const BoundProcedure* bound = d.Resolve(service, name);
  if (bound == nullptr) return "<unimplemented>";
  std::string body;
  Request request;
  request.meta.service = std::string(service);
  request.meta.procedure = std::string(name);
  d.InvokeUnary(*bound, request, [&](absl::StatusOr<Response> r) { body = r->body; });
  return body;
}

TEST(DispatcherTest, ResolvesProceduresAliasesAndRoutesLongestPrefixFirst) {
  Dispatcher d("svc");
  ASSERT_TRUE(d.Register(Unary("A", "a", {"Alias"})).ok());
  ASSERT_TRUE(d.AddOutbound("out", std::make_shared<FakeOutbound>()).ok());
  ASSERT_TRUE(d.AddRoute({"/other.Svc/", "out", ProcedureKind::kUnary}).ok());
  ASSERT_TRUE(d.Start().ok());
  EXPECT_EQ(CallBody(d, "svc", "A"), "a");
  EXPECT_EQ(CallBody(d, "svc", "Alias"), "a");
  EXPECT_EQ(CallBody(d, "", "A"), "a");  // empty service = the dispatcher's own
  EXPECT_EQ(CallBody(d, "other.Svc", "M"), "forwarded:other.Svc/M");
  EXPECT_EQ(CallBody(d, "svc", "Missing"), "<unimplemented>");
  auto intro = d.Introspect();
  EXPECT_EQ(intro["procedures"].size(), 1u);
  EXPECT_EQ(intro["routes"][0]["outbound"], "out");
}

TEST(DispatcherTest, DuplicateNamesAndAliasesAreRejected) {
  Dispatcher d("svc");
  ASSERT_TRUE(d.Register(Unary("A", "a", {"B"})).ok());
  EXPECT_EQ(d.Register(Unary("A", "x")).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(d.Register(Unary("C", "x", {"B"})).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(d.Register(Unary("B", "x")).code(), absl::StatusCode::kAlreadyExists);
}

TEST(DispatcherTest, RouteToUnknownOutboundFailsStart) {
  Dispatcher d("svc");
  ASSERT_TRUE(d.AddRoute({"x/", "nope", ProcedureKind::kUnary}).ok());
  EXPECT_EQ(d.Start().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DispatcherTest, DrainRefusesNewCallsAndWaitsForAdmittedOnes) {
  Dispatcher d("svc");
  ASSERT_TRUE(d.Start().ok());
  ASSERT_TRUE(d.BeginCall());
  d.Drain();
  EXPECT_FALSE(d.BeginCall());
  EXPECT_FALSE(d.WaitIdle(std::chrono::milliseconds(10)));
  d.EndCall();
  EXPECT_TRUE(d.WaitIdle(std::chrono::milliseconds(10)));
}

TEST(JsonProcedureTest, ParsesCallsAndRejectsBadJson) {
  Dispatcher d("svc");
  ASSERT_TRUE(d.Register(JsonUnary("svc", "Add",
                                   [](const nlohmann::json& in,
                                      const core::RequestMeta&) -> absl::StatusOr<nlohmann::json> {
                                     if (!in.contains("a")) return absl::InvalidArgumentError("a");
                                     return nlohmann::json{{"sum", in["a"].get<int>() + 1}};
                                   }))
                  .ok());
  ASSERT_TRUE(d.Start().ok());
  const BoundProcedure* bound = d.Resolve("svc", "Add");
  ASSERT_NE(bound, nullptr);
  auto call = [&](std::string body) {
    absl::StatusOr<Response> out = absl::UnknownError("not called");
    d.InvokeUnary(*bound, Request{.meta = {}, .body = std::move(body)},
                  [&](absl::StatusOr<Response> r) { out = std::move(r); });
    return out;
  };
  auto ok = call(R"({"a": 41})");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(nlohmann::json::parse(ok->body)["sum"], 42);
  EXPECT_EQ(call("not json").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call("{}").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace omnirelay::dispatcher
