// The `gateway` section of the node configuration: shape, defaults, and
// errors that name the offending key (config/config.cc, ParseGateway).
#include <gtest/gtest.h>

#include "omnirelay/config/config.h"

namespace omnirelay::config {
namespace {

nlohmann::json Valid() {
  return nlohmann::json::parse(R"({"omniRelay": {
    "service": "gateway",
    "admin": {"address": "127.0.0.1:0"},
    "gateway": {
      "address": "127.0.0.1:10000",
      "jwt": {"secretFile": "/tmp/jwt-secret"},
      "clusters": {
        "auth": {"endpoints": ["127.0.0.1:7001"]},
        "workers": {"registry": "127.0.0.1:7000", "role": "worker", "refreshInterval": "500ms"}
      },
      "routes": [
        {"prefix": "/my_service.MyServiceAPI/Login", "cluster": "auth",
         "authorization": "none", "balancer": "round-robin"},
        {"prefix": "/my_service.MyServiceAPI/MyService", "cluster": "workers",
         "authorization": "required", "balancer": "sticky", "stickyHeader": "session-id",
         "transferStreams": ["/my_service.MyServiceAPI/MyServiceSubscribe"]}
      ],
      "defaultRoute": {"error": "UNIMPLEMENTED"},
      "maxAttempts": 3,
      "attemptTimeout": "2s"
    }}})");
}

std::string ErrorOf(const nlohmann::json& root) {
  auto parsed = Parse(root);
  EXPECT_FALSE(parsed.ok());
  return parsed.ok() ? "" : std::string(parsed.status().message());
}

TEST(GatewayConfigTest, ParsesTheDocumentedShape) {
  auto parsed = Parse(Valid());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_TRUE(parsed->gateway.has_value());
  const auto& g = *parsed->gateway;
  EXPECT_EQ(g.address, "127.0.0.1:10000");
  EXPECT_EQ(g.jwt_secret_file, "/tmp/jwt-secret");
  EXPECT_EQ(g.clusters.at("auth").endpoints, std::vector<std::string>{"127.0.0.1:7001"});
  EXPECT_EQ(g.clusters.at("workers").registry, "127.0.0.1:7000");
  EXPECT_EQ(g.clusters.at("workers").role, "worker");
  EXPECT_EQ(g.clusters.at("workers").refresh_interval, std::chrono::milliseconds(500));
  ASSERT_EQ(g.routes.size(), 2u);
  EXPECT_EQ(g.routes[1].balancer, "sticky");
  EXPECT_EQ(g.routes[1].authorization, "required");
  EXPECT_EQ(g.routes[1].sticky_header, "session-id");
  EXPECT_EQ(g.routes[1].transfer_streams,
            std::vector<std::string>{"/my_service.MyServiceAPI/MyServiceSubscribe"});
  EXPECT_TRUE(g.routes[0].transfer_streams.empty());  // default: no stream is replayed
  EXPECT_EQ(g.default_route.error, "UNIMPLEMENTED");
  EXPECT_EQ(g.max_attempts, 3);
  EXPECT_EQ(g.attempt_timeout, std::chrono::seconds(2));
  // No other inbound is needed in gateway mode.
  EXPECT_FALSE(parsed->grpc.has_value());
  // Round trip through the effective configuration.
  auto json = ToJson(*parsed);
  EXPECT_EQ(json["omniRelay"]["gateway"]["routes"][1]["stickyHeader"], "session-id");
  EXPECT_EQ(json["omniRelay"]["gateway"]["routes"][1]["transferStreams"][0],
            "/my_service.MyServiceAPI/MyServiceSubscribe");
  EXPECT_EQ(json["omniRelay"]["gateway"]["attemptTimeoutMs"], 2000);
}

TEST(GatewayConfigTest, YamlFormFromTheDocsParses) {
  auto json = YamlToJson(R"(
omniRelay:
  service: gateway
  gateway:
    address: "127.0.0.1:10000"
    jwt: {secretFile: "/s"}
    clusters:
      auth:    {endpoints: ["127.0.0.1:1"]}
      workers: {registry: "127.0.0.1:2", role: worker, refreshInterval: "500ms"}
    routes:
      - {prefix: "/a/Login", cluster: auth, authorization: none, balancer: round-robin}
      - {prefix: "/a/My", cluster: workers, authorization: required, balancer: sticky, stickyHeader: session-id}
    defaultRoute: {cluster: auth}
)");
  ASSERT_TRUE(json.ok());
  auto parsed = Parse(*json);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->gateway->default_route.cluster, "auth");
  EXPECT_EQ(parsed->gateway->default_route.error, "");
}

TEST(GatewayConfigTest, ErrorsNameTheKeyPath) {
  struct Case {
    std::string pointer;  // JSON pointer under /omniRelay/gateway
    nlohmann::json value;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"/address", "nowhere", "omniRelay.gateway.address: 'nowhere' is not host:port"},
      {"/routes/1/cluster", "ghost",
       "omniRelay.gateway.routes[1].cluster: unknown cluster 'ghost'"},
      {"/routes/0/balancer", "random",
       "omniRelay.gateway.routes[0].balancer: unknown balancer 'random' (round-robin, sticky)"},
      {"/routes/1/authorization", "maybe",
       "omniRelay.gateway.routes[1].authorization: unknown authorization 'maybe' (none, required)"},
      {"/routes/1/stickyHeader", "", "omniRelay.gateway.routes[1].stickyHeader: must not be empty"},
      {"/defaultRoute/error", "NOPE",
       "omniRelay.gateway.defaultRoute.error: unknown status code 'NOPE'"},
      {"/maxAttempts", 0, "omniRelay.gateway.maxAttempts: must be an integer >= 1"},
      {"/attemptTimeout", "soon", "omniRelay.gateway.attemptTimeout: must be a duration"},
      {"/clusters/workers/refreshInterval", "0ms",
       "omniRelay.gateway.clusters.workers.refreshInterval: must be positive"},
      {"/clusters/auth/endpoints/0", "x",
       "omniRelay.gateway.clusters.auth.endpoints[0]: 'x' is not"},
      {"/clusters/workers/registry", "bad", "omniRelay.gateway.clusters.workers.registry: 'bad'"},
      {"/clusters/workers/regsitry", "127.0.0.1:1",
       "omniRelay.gateway.clusters.workers.regsitry: unknown key"},
      {"/routs", nlohmann::json::array(), "omniRelay.gateway.routs: unknown key"},
      {"/routes/1/transferStreams/0", "/other.Service/Watch",
       "omniRelay.gateway.routes[1].transferStreams[0]: '/other.Service/Watch' is not a full "
       "method name under prefix '/my_service.MyServiceAPI/MyService'"},
  };
  for (const auto& c : cases) {
    auto root = Valid();
    root["omniRelay"]["gateway"][nlohmann::json::json_pointer(c.pointer)] = c.value;
    const std::string error = ErrorOf(root);
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.pointer << " -> " << error;
  }
}

TEST(GatewayConfigTest, StructuralErrors) {
  auto root = Valid();
  root["omniRelay"]["gateway"].erase("address");
  EXPECT_NE(ErrorOf(root).find("omniRelay.gateway.address: is required"), std::string::npos);

  root = Valid();
  root["omniRelay"]["gateway"]["clusters"]["auth"]["registry"] = "127.0.0.1:9";
  EXPECT_NE(ErrorOf(root).find(
                "omniRelay.gateway.clusters.auth: needs exactly one of 'endpoints' or 'registry'"),
            std::string::npos);

  root = Valid();
  root["omniRelay"]["gateway"]["jwt"].erase("secretFile");
  EXPECT_NE(ErrorOf(root).find("omniRelay.gateway.jwt.secretFile: is required"), std::string::npos);

  root = Valid();
  root["omniRelay"]["gateway"]["defaultRoute"] = {{"error", "NOT_FOUND"}, {"cluster", "auth"}};
  EXPECT_NE(ErrorOf(root).find("omniRelay.gateway.defaultRoute: needs exactly one"),
            std::string::npos);

  root = Valid();
  root["omniRelay"]["gateway"]["defaultRoute"] = {{"cluster", "nowhere"}};
  EXPECT_NE(ErrorOf(root).find("omniRelay.gateway.defaultRoute.cluster: unknown cluster"),
            std::string::npos);

  // Several problems are reported together, one per line.
  root = Valid();
  root["omniRelay"]["gateway"]["maxAttempts"] = -1;
  root["omniRelay"]["gateway"]["routes"][0]["cluster"] = "ghost";
  const std::string both = ErrorOf(root);
  EXPECT_NE(both.find("maxAttempts"), std::string::npos);
  EXPECT_NE(both.find("routes[0].cluster"), std::string::npos);
}

TEST(GatewayConfigTest, DataPathPerRoute) {
  auto parsed = Parse(Valid());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->gateway->routes[0].data_path, "auto");  // the frame relay unless TLS
  EXPECT_EQ(parsed->gateway->frame_threads, 2);
  auto root = Valid();
  root["omniRelay"]["gateway"]["routes"][0]["dataPath"] = "GRPC";
  root["omniRelay"]["gateway"]["frameThreads"] = 4;
  parsed = Parse(root);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->gateway->routes[0].data_path, "grpc");
  EXPECT_EQ(parsed->gateway->frame_threads, 4);
  root["omniRelay"]["gateway"]["routes"][1]["dataPath"] = "fast";
  EXPECT_NE(ErrorOf(root).find("omniRelay.gateway.routes[1].dataPath: unknown data path 'fast'"),
            std::string::npos)
      << ErrorOf(root);
  // The frame relay dials plaintext only: `frame` towards a TLS cluster is refused.
  root = Valid();
  root["omniRelay"]["gateway"]["clusters"]["auth"]["endpoints"] = {"https://127.0.0.1:7001"};
  root["omniRelay"]["gateway"]["routes"][0]["dataPath"] = "frame";
  EXPECT_NE(ErrorOf(root).find("omniRelay.gateway.routes[0].dataPath: the frame relay does not "
                               "dial TLS"),
            std::string::npos)
      << ErrorOf(root);
}

TEST(GatewayConfigTest, EnvironmentAndSetOverridesReachTheSection) {
  auto root = Valid();
  ASSERT_TRUE(ApplySets(root, {"gateway.maxAttempts=5", "gateway.attemptTimeout=\"750ms\""}).ok());
  auto parsed = Parse(root);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->gateway->max_attempts, 5);
  EXPECT_EQ(parsed->gateway->attempt_timeout, std::chrono::milliseconds(750));
}

}  // namespace
}  // namespace omnirelay::config
