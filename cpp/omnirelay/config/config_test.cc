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

}  // namespace
}  // namespace omnirelay::config

namespace omnirelay::config {
namespace {

TEST(ConfigTest, ResourceLeaseNamespacesAndErrorsByKeyPath) {
  auto root = Base();
  root["omniRelay"]["resourceLease"] = nlohmann::json::parse(R"({
    "maxLeaseWait": "5s",
    "namespaces": {"default": {"leaseDuration": "2s", "highWatermark": 10, "lowWatermark": 2},
                   "billing": null}
  })");
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->resource_lease.has_value());
  EXPECT_EQ(config->resource_lease->max_lease_wait, std::chrono::seconds(5));
  EXPECT_EQ(config->resource_lease->namespaces.at("default").high_watermark, 10);
  EXPECT_EQ(config->resource_lease->namespaces.at("default").lease_duration,
            std::chrono::seconds(2));
  EXPECT_EQ(config->resource_lease->namespaces.at("billing").max_attempts, 5);
  EXPECT_TRUE(ToJson(*config)["omniRelay"].contains("resourceLease"));

  root["omniRelay"]["resourceLease"] = nlohmann::json::parse(R"({
    "namespaces": {"Bad Name": {}, "ok": {"highWatermark": 5, "lowWatermark": 9, "typo": 1}}
  })");
  config = Parse(root);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  EXPECT_NE(message.find("omniRelay.resourceLease.namespaces.Bad Name: namespace must be"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("omniRelay.resourceLease.namespaces.ok.lowWatermark: must be below"),
            std::string::npos);
  EXPECT_NE(message.find("omniRelay.resourceLease.namespaces.ok.typo: unknown key"),
            std::string::npos);

  root["omniRelay"]["resourceLease"] = nlohmann::json::object();
  config = Parse(root);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->resource_lease->namespaces.count("default"), 1u) << "one default queue";
}

}  // namespace
}  // namespace omnirelay::config
