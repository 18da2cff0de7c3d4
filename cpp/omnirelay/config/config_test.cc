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

// The chooser names are the peer kit's own table: nothing is accepted that no
// implementation backs (the old fallback list accepted an unimplemented "random").
TEST(ConfigTest, ChooserNamesComeFromThePeerKit) {
  auto root = Base();
  root["omniRelay"]["outbounds"]["analytics"]["peerChooser"] = "random";
  auto config = Parse(root);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(std::string(config.status().message())
                .find("omniRelay.outbounds.analytics.peerChooser: unknown chooser 'random'"),
            std::string::npos)
      << config.status();
  for (const auto& name : KnownChoosers()) {
    root["omniRelay"]["outbounds"]["analytics"]["peerChooser"] = name;
    EXPECT_TRUE(Parse(root).ok()) << name;
  }
  EXPECT_GE(KnownChoosers().size(), 6u);
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

// Each bad value is reported with its key path; none is half-parsed.
TEST(ConfigTest, NumericValuesRejectNanGarbageAndOutOfRangePorts) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"omniRelay.outbounds.analytics.retry.multiplier=\"nan\"",
       "omniRelay.outbounds.analytics.retry.multiplier: must be a number"},
      {"omniRelay.outbounds.analytics.retry.jitter=\"0.1abc\"",
       "omniRelay.outbounds.analytics.retry.jitter: must be a number"},
      {"omniRelay.outbounds.analytics.retry.budgetRatio=\"inf\"",
       "omniRelay.outbounds.analytics.retry.budgetRatio: must be a number"},
      {"omniRelay.outbounds.analytics.maxInFlightPerPeer=\"12x\"",
       "omniRelay.outbounds.analytics.maxInFlightPerPeer: must be an integer"},
      {"omniRelay.outbounds.analytics.threads=2.5",
       "omniRelay.outbounds.analytics.threads: must be an integer"},
      {"omniRelay.inbounds.grpc.address=\"127.0.0.1:65536\"",
       "omniRelay.inbounds.grpc.address: '127.0.0.1:65536' is not host:port (has port 65536 out "
       "of range"},
      {"omniRelay.admin.address=\"127.0.0.1:80x\"", "omniRelay.admin.address: '127.0.0.1:80x'"},
      {"omniRelay.outbounds.analytics.endpoints=[\"h:99999\"]",
       "omniRelay.outbounds.analytics.endpoints[0]: 'h:99999' is not a host:port endpoint"},
      {"omniRelay.drain.timeout=\"nan\"", "omniRelay.drain.timeout: must be a duration"},
      {"omniRelay.drain.timeout=\"10sx\"", "omniRelay.drain.timeout: must be a duration"},
      {"omniRelay.inbounds.http={\"address\":\"127.0.0.1:0\",\"maxBodyBytes\":\"1e3\"}",
       "omniRelay.inbounds.http.maxBodyBytes: must be an integer"},
      {"omniRelay.inbounds.grpc.maxStreams=0",
       "omniRelay.inbounds.grpc.maxStreams: must be an integer >= 1"},
  };
  for (const auto& [set, expected] : cases) {
    auto root = Base();
    ASSERT_TRUE(ApplySets(root, {set}).ok()) << set;
    auto config = Parse(root);
    ASSERT_FALSE(config.ok()) << set;
    EXPECT_NE(std::string(config.status().message()).find(expected), std::string::npos)
        << set << " -> " << config.status();
  }
}

TEST(ConfigTest, HttpLimitsAndStreamCapAreParsed) {
  auto root = Base();
  ASSERT_TRUE(
      ApplySets(root, {"inbounds.http.address=127.0.0.1:0", "inbounds.http.maxHeaderBytes=4096",
                       "inbounds.http.maxBodyBytes=1024", "inbounds.http.headerTimeout=250ms",
                       "inbounds.http.bodyTimeout=2s", "inbounds.grpc.maxStreams=3"})
          .ok());
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->http->max_header_bytes, 4096);
  EXPECT_EQ(config->http->max_body_bytes, 1024);
  EXPECT_EQ(config->http->header_timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(config->http->body_timeout, std::chrono::seconds(2));
  EXPECT_EQ(config->grpc->max_streams, 3);
}

// Regression (config_yaml fuzz target): a self-referential alias made the
// YAML conversion recurse until the stack overflowed.
TEST(ConfigTest, YamlAliasCycleIsAnErrorNotACrash) {
  auto cyclic = YamlToJson("omniRelay: &a\n  service: *a\n");
  ASSERT_FALSE(cyclic.ok());
  EXPECT_NE(std::string(cyclic.status().message()).find("alias"), std::string::npos);
  auto wide = YamlToJson("a: &x [1, 2]\nb: &y [*x, *x, *x, *x]\nc: [*y, *y, *y]\n");
  EXPECT_TRUE(wide.ok()) << wide.status();  // shared (acyclic) aliases stay fine
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

TEST(ConfigTest, ResourceLeaseReplicationBlockAndErrorsByKeyPath) {
  auto root = Base();
  root["omniRelay"]["resourceLease"] = nlohmann::json::parse(R"({
    "replication": {"kind": "file", "path": "/tmp/segs", "durableAck": false, "shard": "users",
                    "deterministic": {"kind": "sqlite", "changeId": "mesh.us-east"}}
  })");
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  const auto& r = config->resource_lease->replication;
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, "file");
  EXPECT_EQ(r->path, "/tmp/segs");
  EXPECT_FALSE(r->durable_ack);
  EXPECT_EQ(r->shard, "users");
  EXPECT_EQ(r->deterministic.kind, "sqlite");
  EXPECT_EQ(r->deterministic.change_id, "mesh.us-east");
  EXPECT_EQ(r->deterministic.effect_id_format, "{changeId}/seq/{n}");
  EXPECT_EQ(ToJson(*config)["omniRelay"]["resourceLease"]["replication"]["shard"], "users");

  root["omniRelay"]["resourceLease"] = nlohmann::json::parse(R"({
    "replication": {"kind": "tape", "durableack": "maybe", "deterministic": {"kind": "redis"}}
  })");
  config = Parse(root);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  EXPECT_NE(message.find(
                "omniRelay.resourceLease.replication.kind: must be sqlite, file, memory or grpc"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("omniRelay.resourceLease.replication.durableAck: must be true or false"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("omniRelay.resourceLease.replication.deterministic.kind: must be"),
            std::string::npos)
      << message;

  root["omniRelay"]["resourceLease"] = nlohmann::json::parse(R"({"replication": {}})");
  config = Parse(root);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(std::string(config.status().message())
                .find("omniRelay.resourceLease.replication.path: is required for kind sqlite"),
            std::string::npos);
}

TEST(LeadershipConfigTest, ParsesStoreScopesAndFastProfile) {
  auto root = Base();
  root["omniRelay"]["leadership"] = nlohmann::json::parse(R"({
    "store": "etcd", "endpoints": ["http://127.0.0.1:2379"], "profile": "fast",
    "scopes": ["global", {"scope": "region/west", "priority": 2}],
    "observe": ["region/east"], "promotionPriority": 3
  })");
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->leadership.has_value());
  const auto& l = *config->leadership;
  EXPECT_EQ(l.store, "etcd");
  EXPECT_EQ(l.endpoints, std::vector<std::string>{"127.0.0.1:2379"});
  EXPECT_EQ(l.lease_ttl, std::chrono::seconds(2));
  ASSERT_EQ(l.scopes.size(), 2u);
  EXPECT_EQ(l.scopes[0].scope, "global");
  EXPECT_EQ(l.scopes[0].priority, 0);
  EXPECT_EQ(l.scopes[1].scope, "region/west");
  EXPECT_EQ(l.scopes[1].priority, 2);
  EXPECT_EQ(l.promotion_priority, 3);
  EXPECT_EQ(ToJson(*config)["omniRelay"]["leadership"]["leaseTtlMs"], 2000);
}

TEST(LeadershipConfigTest, ErrorsNameTheKeyPath) {
  auto root = Base();
  root["omniRelay"]["leadership"] = nlohmann::json::parse(R"({
    "store": "zookeeper", "scopes": ["regions/west"], "profile": "slow", "leaseTtl": "10ms"
  })");
  auto config = Parse(root);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  for (const char* expected : {"omniRelay.leadership.store: unknown store 'zookeeper'",
                               "omniRelay.leadership.scopes[0]: 'regions/west' is not a scope",
                               "omniRelay.leadership.profile: unknown profile 'slow'",
                               "omniRelay.leadership.leaseTtl: must be at least 100ms"}) {
    EXPECT_NE(message.find(expected), std::string::npos) << expected << "\nin:\n" << message;
  }
  root["omniRelay"]["leadership"] = {{"store", "etcd"}};
  config = Parse(root);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(std::string(config.status().message())
                .find("omniRelay.leadership.endpoints: the etcd store needs at least one endpoint"),
            std::string::npos);
}

TEST(ShardsConfigTest, ParsesNamespaces) {
  auto root = Base();
  root["omniRelay"]["mesh"] = nlohmann::json::parse(R"({"nodeId": "n1"})");
  root["omniRelay"]["leadership"] = nlohmann::json::parse(R"({"store": "memory"})");
  root["omniRelay"]["shards"] = nlohmann::json::parse(R"({
    "reconcileInterval": "250ms", "rebalanceCooldown": "5s",
    "namespaces": {
      "users": {"shards": 4096, "strategy": "hrw", "replicas": 2, "budget": 500,
                "service": "users.v1.Users", "localService": "omnirelay.echo.v1.Echo"},
      "geo": {"strategy": "locality", "locality": {"region": "east", "zone": "a"},
              "leaderScope": "region/east", "ownerRole": "owner"}
    }
  })");
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->shards.has_value());
  const auto& users = config->shards->namespaces.at("users");
  EXPECT_EQ(users.shards, 4096);
  EXPECT_EQ(users.strategy, "rendezvous");
  EXPECT_EQ(users.replicas, 2);
  EXPECT_EQ(users.budget, 500);
  EXPECT_EQ(users.leader_scope, "global");
  const auto& geo = config->shards->namespaces.at("geo");
  EXPECT_EQ(geo.shards, 64);
  EXPECT_EQ(geo.region, "east");
  EXPECT_EQ(geo.owner_role, "owner");
  EXPECT_EQ(config->shards->reconcile_interval, std::chrono::milliseconds(250));
  EXPECT_EQ(config->shards->rebalance_cooldown, std::chrono::seconds(5));
  EXPECT_EQ(ToJson(*config)["omniRelay"]["shards"]["namespaces"]["users"]["shards"], 4096);
}

TEST(ShardsConfigTest, ParsesTheRouteOptionsStreamsGeoAndForward) {
  auto root = Base();
  root["omniRelay"]["mesh"] = nlohmann::json::parse(R"({"nodeId": "n1", "region": "west"})");
  root["omniRelay"]["leadership"] = nlohmann::json::parse(R"({"store": "memory"})");
  root["omniRelay"]["backpressure"] = nlohmann::json::parse(R"({"shardThrottle": "shard"})");
  root["omniRelay"]["shards"] = nlohmann::json::parse(R"({"namespaces": {"users": {
    "service": "users.v1.Users", "localService": "omnirelay.echo.v1.Echo",
    "streams": {"Watch": "server-stream", "Chat": "Duplex"},
    "geo": {"latencyThresholdMs": 80, "holdMs": 5000, "probeEvery": 4},
    "forward": {"maxInFlightPerPeer": 32, "breakerFailures": 0, "breakerOpenDelay": "2s",
                "threads": 3}}}})");
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  const auto& users = config->shards->namespaces.at("users");
  EXPECT_EQ(users.streams.at("Watch"), "server-stream");
  EXPECT_EQ(users.streams.at("Chat"), "duplex");
  ASSERT_TRUE(users.geo.has_value());
  EXPECT_EQ(users.geo->latency_threshold_ms, 80);
  EXPECT_EQ(users.geo->hold, std::chrono::seconds(5));
  EXPECT_EQ(users.geo->probe_every, 4);
  EXPECT_EQ(users.forward_max_in_flight_per_peer, 32);
  EXPECT_EQ(users.forward_breaker_failures, 0);
  EXPECT_EQ(users.forward_breaker_open_delay, std::chrono::seconds(2));
  EXPECT_EQ(users.forward_threads, 3);
  EXPECT_EQ(config->backpressure.shard_throttle, "shard");
  const auto json = ToJson(*config)["omniRelay"];
  EXPECT_EQ(json["shards"]["namespaces"]["users"]["geo"]["probeEvery"], 4);
  EXPECT_EQ(json["shards"]["namespaces"]["users"]["forward"]["threads"], 3);
  EXPECT_EQ(json["backpressure"]["shardThrottle"], "shard");

  root["omniRelay"]["mesh"] = nlohmann::json::parse(R"({"nodeId": "n1"})");
  root["omniRelay"]["backpressure"] = nlohmann::json::parse(R"({"shardThrottle": "node"})");
  root["omniRelay"]["shards"]["namespaces"]["users"]["streams"] =
      nlohmann::json::parse(R"({"Watch": "stream"})");
  root["omniRelay"]["shards"]["namespaces"]["users"]["geo"] =
      nlohmann::json::parse(R"({"latencySignal": "p75"})");
  config = Parse(root);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  for (const char* expected :
       {"omniRelay.shards.namespaces.users.streams.Watch: unknown stream kind",
        "omniRelay.shards.namespaces.users.geo.latencySignal: unknown signal 'p75'",
        "omniRelay.shards.namespaces.users.geo.region: needed when the node has no mesh region",
        "omniRelay.backpressure.shardThrottle: unknown mode 'node'"}) {
    EXPECT_NE(message.find(expected), std::string::npos) << expected << "\nin:\n" << message;
  }
}

TEST(ShardsConfigTest, ErrorsNameTheKeyPath) {
  auto root = Base();
  root["omniRelay"]["shards"] = nlohmann::json::parse(R"({
    "namespaces": {
      "users": {"shards": 0, "strategy": "random", "replicas": 17, "budget": -1,
                "leaderScope": "everyone", "service": "users.v1.Users", "shardz": 3},
      "geo": {"strategy": "ring", "locality": {"region": "east"}}
    }
  })");
  auto config = Parse(root);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  for (const char* expected :
       {"omniRelay.shards.namespaces.users.shards: must be an integer >= 1",
        "omniRelay.shards.namespaces.users.strategy: unknown strategy 'random'",
        "omniRelay.shards.namespaces.users.replicas: must be at most 16",
        "omniRelay.shards.namespaces.users.budget: must be a number >= 0",
        "omniRelay.shards.namespaces.users.leaderScope: 'everyone' is not a scope",
        "omniRelay.shards.namespaces.users.localService: needed with service",
        "omniRelay.shards.namespaces.users.shardz: unknown key",
        "omniRelay.shards.namespaces.geo.locality: only the locality strategy",
        "omniRelay.shards: needs omniRelay.mesh", "omniRelay.shards: needs omniRelay.leadership"}) {
    EXPECT_NE(message.find(expected), std::string::npos) << expected << "\nin:\n" << message;
  }
  root["omniRelay"]["shards"] = nlohmann::json::parse(R"({"namespaces": {}})");
  config = Parse(root);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(std::string(config.status().message())
                .find("omniRelay.shards.namespaces: needs at least one namespace"),
            std::string::npos);
}

}  // namespace
}  // namespace omnirelay::config

namespace omnirelay::config {
namespace {

TEST(ConfigGeoTest, ParsesEveryOptionAndEchoesIt) {
  auto root = Base();
  root["omniRelay"]["outbounds"]["analytics"]["geo"] = nlohmann::json::parse(R"({
    "region": "west", "latencyThresholdMs": 80, "latencySignal": "P90",
    "failureRateThreshold": 0.2, "minSamples": 5, "holdMs": 3000,
    "evaluateEveryMs": 50, "probeEvery": 10, "innerChooser": "round-robin"})");
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  const auto& geo = *config->outbounds.at("analytics").geo;
  EXPECT_EQ(geo.region, "west");
  EXPECT_EQ(geo.latency_threshold_ms, 80);
  EXPECT_EQ(geo.latency_signal, "p90");
  EXPECT_EQ(geo.failure_rate_threshold, 0.2);
  EXPECT_EQ(geo.min_samples, 5);
  EXPECT_EQ(geo.hold, std::chrono::seconds(3));
  EXPECT_EQ(geo.evaluate_every, std::chrono::milliseconds(50));
  EXPECT_EQ(geo.probe_every, 10);
  EXPECT_EQ(geo.inner_chooser, "round-robin");
  auto echoed = ToJson(*config)["omniRelay"]["outbounds"]["analytics"]["geo"];
  EXPECT_EQ(echoed["holdMs"], 3000);
  EXPECT_EQ(echoed["innerChooser"], "round-robin");
  root["omniRelay"]["outbounds"]["analytics"]["geo"].erase("holdMs");
  root["omniRelay"]["outbounds"]["analytics"]["geo"]["returnAfter"] = "2s";
  config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->outbounds.at("analytics").geo->hold, std::chrono::seconds(2));
}

TEST(ConfigGeoTest, BadOptionsNameTheKeyPath) {
  auto root = Base();
  root["omniRelay"]["outbounds"]["analytics"]["geo"] = nlohmann::json::parse(R"({
    "latencySignal": "p75", "failureRateThreshold": 1.5, "innerChooser": "geo-ish",
    "evaluateEveryMs": 0, "minSamples": 0, "holdMs": "soon", "bogus": 1})");
  auto config = Parse(root);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  for (const char* expected :
       {"omniRelay.outbounds.analytics.geo.latencySignal: unknown signal 'p75'",
        "omniRelay.outbounds.analytics.geo.failureRateThreshold: must be within [0, 1]",
        "omniRelay.outbounds.analytics.geo.innerChooser: unknown chooser 'geo-ish'",
        "omniRelay.outbounds.analytics.geo.evaluateEveryMs: must be positive",
        "omniRelay.outbounds.analytics.geo.minSamples: must be an integer >= 1",
        "omniRelay.outbounds.analytics.geo.holdMs: must be a duration",
        "omniRelay.outbounds.analytics.geo.bogus: unknown key",
        // No region and no mesh identity to default it from.
        "omniRelay.outbounds.analytics.geo.region: is required"}) {
    EXPECT_NE(message.find(expected), std::string::npos) << expected << "\n" << message;
  }
}

TEST(ConfigGeoTest, RegionDefaultsToTheMeshIdentity) {
  auto root = Base();
  root["omniRelay"]["mesh"] = nlohmann::json::parse(R"({"region": "east"})");
  root["omniRelay"]["outbounds"]["analytics"]["geo"] = nlohmann::json::object();
  auto config = Parse(root);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->outbounds.at("analytics").geo->region, "");  // resolved by the node
  EXPECT_EQ(config->mesh->identity.region, "east");
}

}  // namespace
}  // namespace omnirelay::config
