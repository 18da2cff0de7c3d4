// A node end to end, in process: real gRPC and HTTP listeners, the admin
// endpoints, a relay node forwarding through its outbound (peer kit), and a
// gateway-mode node proxying to the same backend. Runs in the ASan stage.
#include "omnirelay/node/node.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "omnirelay/core/address.h"
#include "omnirelay/http/http_server.h"
#include "omnirelay/node/replication_wiring.h"

namespace omnirelay::node {
namespace {

std::unique_ptr<Node> StartNode(const std::string& json) {
  auto parsed = config::Parse(nlohmann::json::parse(json));
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  auto node = Node::Create(*parsed);
  EXPECT_TRUE(node.ok()) << node.status();
  auto started = (*node)->Start();
  EXPECT_TRUE(started.ok()) << started;
  return std::move(*node);
}

struct Reply {
  grpc::Status status;
  std::string body;
};

Reply GrpcUnary(const std::string& address, const std::string& method, const std::string& body) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::CompletionQueue cq;
  grpc::Slice slice(body.data(), body.size());
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  Reply reply;
  auto reader = stub.PrepareUnaryCall(&ctx, method, request, &cq);
  reader->StartCall();
  int tag = 1;
  reader->Finish(&response, &reply.status, &tag);
  void* got = nullptr;
  bool ok = false;
  EXPECT_TRUE(cq.Next(&got, &ok));
  cq.Shutdown();
  while (cq.Next(&got, &ok)) {
  }
  std::vector<grpc::Slice> slices;
  if (reply.status.ok() && response.Dump(&slices).ok()) {
    for (const auto& s : slices)
      reply.body.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return reply;
}

http::HttpClientResult Get(const std::string& address, const std::string& path,
                           const std::string& method = "GET", const std::string& body = {},
                           const core::Headers& headers = {}) {
  auto hp = core::ParseHostPort(address);
  EXPECT_TRUE(hp.ok()) << address;
  auto result = http::HttpCall(hp->host, hp->port, method, path, body, headers);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : http::HttpClientResult{};
}

TEST(NodeTest, EchoRelayAndGatewayEndToEnd) {
  auto backend = StartNode(R"({"omniRelay": {"service": "backend",
      "inbounds": {"grpc": {"address": "127.0.0.1:0"}, "http": {"address": "127.0.0.1:0"}},
      "admin": {"address": "127.0.0.1:0"},
      "echo": {"instance": "b1", "procedures": ["trace.Analytics/Process"]}}})");
  const std::string backend_grpc = backend->grpc_address();

  auto relay = StartNode(R"({"omniRelay": {"service": "relay",
      "inbounds": {"grpc": {"address": "127.0.0.1:0"}, "http": {"address": "127.0.0.1:0"}},
      "admin": {"address": "127.0.0.1:0"},
      "outbounds": {"analytics": {"endpoints": [")" +
                         backend_grpc + R"("],
                                  "peerChooser": "round-robin"}},
      "routes": [{"prefix": "/trace.Analytics/", "outbound": "analytics"}]}})");

  auto gateway = StartNode(R"({"omniRelay": {"service": "gw",
      "admin": {"address": "127.0.0.1:0"},
      "gateway": {"address": "127.0.0.1:0",
                  "clusters": {"backends": {"endpoints": [")" +
                           backend_grpc + R"("]}},
                  "routes": [{"prefix": "/trace.Analytics/", "cluster": "backends"}]}}})");
  const std::string gateway_address = gateway->ReadyInfo()["gateway"].get<std::string>();

  // Direct, relayed (route -> outbound -> peer kit -> gRPC), and through the gateway.
  for (const std::string& address : {backend_grpc, relay->grpc_address(), gateway_address}) {
    auto reply = GrpcUnary(address, "/trace.Analytics/Process", "payload-1");
    ASSERT_TRUE(reply.status.ok()) << address << ": " << reply.status.error_message();
    EXPECT_EQ(reply.body, "payload-1") << address;
  }
  EXPECT_EQ(GrpcUnary(relay->grpc_address(), "/nope.Svc/X", "").status.error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(GrpcUnary(gateway_address, "/nope.Svc/X", "").status.error_code(),
            grpc::StatusCode::UNIMPLEMENTED);

  // HTTP inbound of the relay forwards too.
  core::Headers rpc;
  rpc.Set("rpc-service", "trace.Analytics");
  rpc.Set("rpc-procedure", "Process");
  auto over_http = Get(relay->http_address(), "/", "POST", "payload-2", rpc);
  EXPECT_EQ(over_http.status, 200) << over_http.body;
  EXPECT_EQ(over_http.body, "payload-2");

  // Admin endpoints.
  EXPECT_EQ(Get(relay->admin_address(), "/healthz").status, 200);
  EXPECT_EQ(Get(relay->admin_address(), "/readyz").status, 200);
  auto introspect =
      nlohmann::json::parse(Get(relay->admin_address(), "/omnirelay/introspect").body);
  EXPECT_EQ(introspect["service"], "relay");
  auto gw = nlohmann::json::parse(Get(gateway->admin_address(), "/omnirelay/gateway").body);
  EXPECT_EQ(gw["clusters"]["backends"]["members"].size(), 1u);
  auto metrics = Get(relay->admin_address(), "/metrics").body;
  EXPECT_NE(metrics.find("omnirelay_peer_"), std::string::npos);

  // Drain: readiness turns 503 and new calls are refused as UNAVAILABLE / 503.
  relay->Drain();
  auto ready = Get(relay->admin_address(), "/readyz");
  EXPECT_EQ(ready.status, 503);
  EXPECT_NE(ready.body.find("draining"), std::string::npos);
  EXPECT_EQ(GrpcUnary(relay->grpc_address(), "/trace.Analytics/Process", "x").status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
  auto refused = Get(relay->http_address(), "/", "POST", "x", rpc);
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.headers.Get("retry-after"), "1");
  EXPECT_TRUE(relay->WaitIdle(std::chrono::seconds(5)));

  gateway->Stop();
  relay->Stop();
  backend->Stop();
}

TEST(NodeTest, HttpLimitsFromConfigReachTheInbound) {
  auto node = StartNode(R"({"omniRelay": {"service": "limits",
      "inbounds": {"http": {"address": "127.0.0.1:0", "maxBodyBytes": 16}},
      "admin": {"address": "127.0.0.1:0"}, "echo": {}}})");
  core::Headers rpc;
  rpc.Set("rpc-service", "omnirelay.echo.v1.Echo");
  rpc.Set("rpc-procedure", "Echo");
  EXPECT_EQ(Get(node->http_address(), "/", "POST", "small", rpc).status, 200);
  EXPECT_EQ(Get(node->http_address(), "/", "POST", std::string(64, 'x'), rpc).status, 413);
  rpc.Set("rpc-ttl-ms", "soon");
  auto bad_ttl = Get(node->http_address(), "/", "POST", "small", rpc);
  EXPECT_EQ(bad_ttl.status, 400);
  EXPECT_NE(bad_ttl.body.find("Rpc-Ttl-Ms"), std::string::npos) << bad_ttl.body;
  node->Stop();
}

}  // namespace
// The replication hub is dialled by the scheme rule of every outbound:
// https:// is TLS (with or without omniRelay.tls), never silently plaintext.
TEST(HubTargetTest, HttpsIsTlsAndNeverSilentlyPlaintext) {
  const tls::TlsOptions tls{.ca_file = "/ca.crt"};
  auto bare = HubTarget("127.0.0.1:7000", tls);
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->address, "127.0.0.1:7000");
  EXPECT_EQ(bare->credentials, nullptr);

  auto https = HubTarget("https://hub.example:7000", tls);
  ASSERT_TRUE(https.ok());
  EXPECT_EQ(https->address, "hub.example:7000");
  EXPECT_NE(https->credentials, nullptr);
  auto system_store = HubTarget("grpcs://hub.example:7000", std::nullopt);
  ASSERT_TRUE(system_store.ok());
  EXPECT_NE(system_store->credentials, nullptr);

  auto http = HubTarget("http://hub:7000", std::nullopt);
  ASSERT_TRUE(http.ok());
  EXPECT_EQ(http->address, "hub:7000");
  EXPECT_EQ(http->credentials, nullptr);
  EXPECT_EQ(HubTarget("ftp://hub:7000", std::nullopt).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HubTarget("hub", std::nullopt).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace omnirelay::node
