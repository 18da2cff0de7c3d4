#include "omnirelay/config/config.h"

#include <gtest/gtest.h>

namespace omnirelay::config {
namespace {

nlohmann::json Base() {
  return nlohmann::json::parse(R"({
    "omniRelay": {
      "service": "gateway",
      "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
      "outbounds": {
        "analytics": {
          "transport": "grpc",
          "service": "trace.Analytics",
          "procedure": "trace.Analytics/Process",
          "endpoints": ["https://analytics-1:8443", "https://analytics-2:8443"],
          "peerChooser": "fewest-pending"
        }
      },
      "routes": [{"prefix": "/trace.Analytics/", "outbound": "analytics"}]
    }
  })");
}

TEST(ConfigTest, ParsesSeedShape) {
  auto config = Parse(Base());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->service, "gateway");
  ASSERT_TRUE(config->grpc.has_value());
  EXPECT_EQ(config->outbounds.at("analytics").endpoints.size(), 2u);
  EXPECT_EQ(config->routes.at(0).outbound, "analytics");
}

TEST(ConfigTest, UnknownChooserNamesTheKey) {
  auto root = Base();
  root["omniRelay"]["outbounds"]["analytics"]["peerChooser"] = "fewest";
  auto config = Parse(root);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(std::string(config.status().message())
                .find("omniRelay.outbounds.analytics.peerChooser: unknown chooser 'fewest'"),
            std::string::npos)
      << config.status();
}

TEST(ConfigTest, EchoProceduresAreParsedAndCheckedByName) {
  auto root = Base();
  root["omniRelay"]["echo"] = {{"procedures", {"trace.Analytics/Process"}}};
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->echo.procedures, std::vector<std::string>{"trace.Analytics/Process"});
  root["omniRelay"]["echo"]["procedures"] = {"trace.Analytics/Process", "NoSlash"};
  config = Parse(root);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(std::string(config.status().message())
                .find("omniRelay.echo.procedures[1]: 'NoSlash' is not service/Method"),
            std::string::npos)
      << config.status();
}

TEST(ConfigTest, UnknownKeyAndBadRouteAreReported) {
  auto root = Base();
  root["omniRelay"]["outbounds"]["analytics"]["endpoint"] = "typo";
  root["omniRelay"]["routes"][0]["outbound"] = "missing";
  auto config = Parse(root);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  EXPECT_NE(message.find("omniRelay.outbounds.analytics.endpoint: unknown key"), std::string::npos);
  EXPECT_NE(message.find("omniRelay.routes[0].outbound: unknown outbound 'missing'"),
            std::string::npos);
}

TEST(ConfigTest, SetAndEnvironmentOverride) {
  auto root = Base();
  ASSERT_TRUE(ApplySets(root, {"outbounds.analytics.maxInFlightPerPeer=4"}).ok());
  std::string env_entry = "OMNIRELAY__OUTBOUNDS__ANALYTICS__PEERCHOOSER=round-robin";
  char* env[] = {env_entry.data(), nullptr};
  ASSERT_TRUE(ApplyEnvironment(root, env).ok());
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->outbounds.at("analytics").max_in_flight_per_peer, 4);
  EXPECT_EQ(config->outbounds.at("analytics").peer_chooser, "round-robin");
}

TEST(ConfigTest, YamlMatchesJson) {
  auto yaml = YamlToJson(R"(
omniRelay:
  service: gateway
  inbounds:
    http:
      address: "127.0.0.1:0"
  echo:
    maxConcurrency: 4
    latency: 5ms
)");
  ASSERT_TRUE(yaml.ok());
  auto config = Parse(*yaml);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->echo.enabled);
  EXPECT_EQ(config->echo.max_concurrency, 4);
  EXPECT_EQ(config->echo.latency, std::chrono::milliseconds(5));
}

TEST(ConfigTest, MeshIdentityIsParsedWithDefaults) {
  auto yaml = YamlToJson(R"(
omniRelay:
  service: east-leader
  inbounds: {grpc: {address: "127.0.0.1:0"}}
  mesh:
    roles: [regional-leader, gossip]
    region: east
    zone: east-a
    labels: {tier: regional, rack: 7}
    seeds: ["127.0.0.1:7001", "grpc://127.0.0.1:7002"]
    peerAddresses: {global-leader: "127.0.0.1:7101"}
    gossip: {profile: test, probeInterval: 150ms, indirectChecks: 2}
)");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  auto config = Parse(*yaml);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->mesh.has_value());
  const MeshIdentity& id = config->mesh->identity;
  EXPECT_EQ(id.node_id, "east-leader");  // defaults to the service name
  EXPECT_EQ(id.cluster_name, "omnirelay");
  EXPECT_EQ(id.roles, (std::vector<std::string>{"regional-leader", "gossip"}));
  EXPECT_EQ(id.region, "east");
  EXPECT_EQ(id.zone, "east-a");
  EXPECT_EQ(id.labels.at("rack"), "7");
  EXPECT_EQ(config->mesh->seeds.at(1), "127.0.0.1:7002");
  EXPECT_EQ(config->mesh->peer_addresses.at("global-leader"), "127.0.0.1:7101");
  EXPECT_EQ(config->mesh->gossip.profile, "test");
  EXPECT_EQ(config->mesh->gossip.probe_interval, std::chrono::milliseconds(150));
  EXPECT_EQ(config->mesh->gossip.indirect_checks, 2);
  EXPECT_FALSE(config->mesh->gossip.probe_timeout.has_value());
  const auto json = ToJson(*config);
  EXPECT_EQ(json["omniRelay"]["mesh"]["region"], "east");
  EXPECT_EQ(json["omniRelay"]["mesh"]["gossip"]["probeIntervalMs"], 150);
}

TEST(ConfigTest, MeshErrorsNameTheKeyPath) {
  auto root = Base();
  root["omniRelay"]["mesh"] = {{"nodeId", "bad id"},
                               {"roles", {"ok", ""}},
                               {"seeds", {"nowhere"}},
                               {"gossip", {{"profile", "wan"}, {"probeInterval", "soon"}}},
                               {"labes", "typo"}};
  auto config = Parse(root);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  for (const char* expected : {"omniRelay.mesh.nodeId: 'bad id' is not a valid node id",
                               "omniRelay.mesh.roles[1]: '' is not a valid role name",
                               "omniRelay.mesh.seeds[0]: 'nowhere' is not host:port",
                               "omniRelay.mesh.gossip.profile: unknown profile 'wan'",
                               "omniRelay.mesh.gossip.probeInterval: must be a duration",
                               "omniRelay.mesh.labes: unknown key"}) {
    EXPECT_NE(message.find(expected), std::string::npos) << expected << "\nin:\n" << message;
  }
}

TEST(ConfigTest, MeshNeedsTheGrpcListener) {
  auto root = Base();
  root["omniRelay"]["inbounds"] = nlohmann::json::object();
  root["omniRelay"]["mesh"] = {{"region", "east"}};
  auto config = Parse(root);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(
      std::string(config.status().message()).find("omniRelay.mesh: needs omniRelay.inbounds.grpc"),
      std::string::npos)
      << config.status();
}

TEST(ConfigTest, MeshFlagsAsSetsAndOutboundSelector) {
  auto root = Base();
  ASSERT_TRUE(
      ApplySets(root, {"mesh.nodeId=n1", "mesh.roles=replica,shard", "mesh.labels.tier=web",
                       "outbounds.analytics.endpoints=[]", "outbounds.analytics.mesh.role=replica",
                       "outbounds.analytics.mesh.region=west"})
          .ok());
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->mesh->identity.node_id, "n1");
  EXPECT_EQ(config->mesh->identity.roles, (std::vector<std::string>{"replica", "shard"}));
  EXPECT_EQ(config->mesh->identity.labels.at("tier"), "web");
  ASSERT_TRUE(config->outbounds.at("analytics").mesh.has_value());
  EXPECT_EQ(config->outbounds.at("analytics").mesh->role, "replica");
  // Both a static list and a selector: ambiguous.
  root["omniRelay"]["outbounds"]["analytics"]["endpoints"] = {"127.0.0.1:1"};
  config = Parse(root);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(std::string(config.status().message())
                .find("omniRelay.outbounds.analytics: needs exactly one of 'endpoints' or 'mesh'"),
            std::string::npos)
      << config.status();
}

}  // namespace
}  // namespace omnirelay::config
