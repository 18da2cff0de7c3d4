// gRPC inbound and outbound over TLS and mTLS with real certificates made at
// test time: the verified client identity reaches RequestMeta, and an expired
// certificate, a certificate from another CA, a missing client certificate
// and a plaintext dial to a TLS listener all fail the call.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <thread>

#include "omnirelay/core/metrics.h"
#include "omnirelay/tls/test_certs.h"
#include "omnirelay/transport/grpc_transport.h"

namespace omnirelay::transport {
namespace {

using tls::testing::TestPki;

class GrpcTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tls::testing::MakeTempDir("omnirelay-grpc-tls");
    pki_ = TestPki::Create(dir_, "mesh");
    other_ = TestPki::Create(dir_, "other");
    std::tie(server_cert_, server_key_) = pki_.Leaf("server", "server");
    std::tie(client_cert_, client_key_) = pki_.Leaf("client", "client");

    dispatcher_ = std::make_shared<dispatcher::Dispatcher>("tls");
    dispatcher::Procedure whoami;
    whoami.service = "tls";
    whoami.name = "WhoAmI";
    whoami.unary = [](dispatcher::Request request, dispatcher::UnaryCallback done) {
      dispatcher::Response response;
      response.body = request.meta.peer_identity + "|" +
                      (request.meta.peer_address.empty() ? "no-peer" : "peer");
      done(std::move(response));
    };
    ASSERT_TRUE(dispatcher_->Register(std::move(whoami)).ok());
    ASSERT_TRUE(dispatcher_->Start().ok());
  }
  void TearDown() override {
    if (inbound_) inbound_->Shutdown(std::chrono::milliseconds(0));
    std::filesystem::remove_all(dir_);
  }

  void StartInbound(tls::ClientAuth mode) {
    inbound_ = std::make_unique<GrpcInbound>(
        GrpcInboundOptions{.address = "127.0.0.1:0",
                           .threads = 1,
                           .tls = tls::TlsOptions{.cert_file = server_cert_,
                                                  .key_file = server_key_,
                                                  .ca_file = pki_.ca_file,
                                                  .client_auth = mode}},
        dispatcher_);
    ASSERT_TRUE(inbound_->Start().ok());
  }

  // One unary call through a GrpcOutbound to `endpoint`.
  absl::StatusOr<std::string> Call(const std::string& endpoint,
                                   std::optional<tls::TlsOptions> client) {
    auto clock = core::SystemClock::Shared();
    PeerPoolOptions peers{.breaker_consecutive_failures = 0, .service = "tls", .transport = "grpc"};
    auto pool = MakeCoordinatorPeerPool({endpoint}, peers, clock,
                                        std::make_shared<core::MetricsRegistry>());
    if (!pool.ok()) return pool.status();
    GrpcOutbound outbound({.name = "tls",
                           .service = "tls",
                           .procedure = "",
                           .endpoints = {endpoint},
                           .peers = peers,
                           .threads = 1,
                           .tls = std::move(client)},
                          *pool, clock);
    if (auto s = outbound.Start(); !s.ok()) return s;
    dispatcher::Request request;
    request.meta.service = "tls";
    request.meta.procedure = "WhoAmI";
    request.meta.time_to_live = std::chrono::seconds(10);
    std::promise<absl::StatusOr<dispatcher::Response>> promise;
    outbound.CallUnary(std::move(request), [&promise](absl::StatusOr<dispatcher::Response> r) {
      promise.set_value(std::move(r));
    });
    auto result = promise.get_future().get();
    outbound.Stop();
    if (!result.ok()) return result.status();
    return result->body;
  }

  std::string Https() const { return "https://127.0.0.1:" + std::to_string(inbound_->port()); }

  std::string dir_;
  TestPki pki_, other_;
  std::string server_cert_, server_key_, client_cert_, client_key_;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::unique_ptr<GrpcInbound> inbound_;
};

TEST_F(GrpcTlsTest, MutualTlsCarriesTheVerifiedClientIdentity) {
  StartInbound(tls::ClientAuth::kRequire);
  auto body = Call(
      Https(),
      tls::TlsOptions{.cert_file = client_cert_, .key_file = client_key_, .ca_file = pki_.ca_file});
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "spiffe://omnirelay/client|peer");
}

TEST_F(GrpcTlsTest, ServerTlsWithoutClientCertificateIsAnonymous) {
  StartInbound(tls::ClientAuth::kNone);
  auto body = Call(Https(), tls::TlsOptions{.ca_file = pki_.ca_file});
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "|peer");
}

TEST_F(GrpcTlsTest, MissingClientCertificateIsRefused) {
  StartInbound(tls::ClientAuth::kRequire);
  auto body = Call(Https(), tls::TlsOptions{.ca_file = pki_.ca_file});
  ASSERT_FALSE(body.ok());
  EXPECT_EQ(body.status().code(), absl::StatusCode::kUnavailable) << body.status();
}

TEST_F(GrpcTlsTest, ExpiredClientCertificateIsRefused) {
  StartInbound(tls::ClientAuth::kRequire);
  auto [cert, key] = pki_.Leaf("old", "old", -60);
  auto body =
      Call(Https(), tls::TlsOptions{.cert_file = cert, .key_file = key, .ca_file = pki_.ca_file});
  ASSERT_FALSE(body.ok());
  EXPECT_EQ(body.status().code(), absl::StatusCode::kUnavailable) << body.status();
}

TEST_F(GrpcTlsTest, ClientCertificateFromAnotherCaIsRefused) {
  StartInbound(tls::ClientAuth::kRequire);
  auto [cert, key] = other_.Leaf("stranger", "stranger");
  auto body =
      Call(Https(), tls::TlsOptions{.cert_file = cert, .key_file = key, .ca_file = pki_.ca_file});
  ASSERT_FALSE(body.ok());
  EXPECT_EQ(body.status().code(), absl::StatusCode::kUnavailable) << body.status();
}

TEST_F(GrpcTlsTest, ServerFromAnotherCaIsRefusedByTheClient) {
  StartInbound(tls::ClientAuth::kNone);
  auto body = Call(Https(), tls::TlsOptions{.ca_file = other_.ca_file});
  ASSERT_FALSE(body.ok());
  EXPECT_EQ(body.status().code(), absl::StatusCode::kUnavailable) << body.status();
  // The client's own verification says why (gRPC reports server-side
  // refusals only as a closed socket).
  EXPECT_NE(body.status().message().find("certificate verify failed"), std::string::npos)
      << body.status();
}

TEST_F(GrpcTlsTest, ExpiredServerCertificateIsRefusedByTheClient) {
  std::tie(server_cert_, server_key_) = pki_.Leaf("server", "server", -60);
  StartInbound(tls::ClientAuth::kNone);
  auto body = Call(Https(), tls::TlsOptions{.ca_file = pki_.ca_file});
  ASSERT_FALSE(body.ok());
  EXPECT_EQ(body.status().code(), absl::StatusCode::kUnavailable) << body.status();
  // The client's own verification says why (gRPC reports server-side
  // refusals only as a closed socket).
  EXPECT_NE(body.status().message().find("certificate verify failed"), std::string::npos)
      << body.status();
}

TEST_F(GrpcTlsTest, RotatedServerCertificateIsServedWithoutRestart) {
  std::tie(server_cert_, server_key_) = pki_.Leaf("server", "server", -60);
  StartInbound(tls::ClientAuth::kNone);
  auto refused = Call(Https(), tls::TlsOptions{.ca_file = pki_.ca_file});
  ASSERT_FALSE(refused.ok());
  pki_.Leaf("server", "server");  // rotate in place; gRPC's file watcher picks it up
  absl::StatusOr<std::string> body = absl::UnknownError("not tried");
  for (int i = 0; i < 60 && !body.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    body = Call(Https(), tls::TlsOptions{.ca_file = pki_.ca_file});
  }
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "|peer");
}

TEST_F(GrpcTlsTest, PlaintextEndpointDoesNotReachATlsListener) {
  StartInbound(tls::ClientAuth::kNone);
  // host:port without https:// is plaintext by contract; the TLS listener
  // refuses it rather than the call silently succeeding unencrypted.
  auto body = Call("127.0.0.1:" + std::to_string(inbound_->port()), std::nullopt);
  ASSERT_FALSE(body.ok());
  EXPECT_EQ(body.status().code(), absl::StatusCode::kUnavailable) << body.status();
}

TEST(GrpcTargetTest, OnlyHttpsIsTls) {
  EXPECT_TRUE(IsTlsEndpoint("https://10.0.0.1:443"));
  EXPECT_FALSE(IsTlsEndpoint("http://10.0.0.1:80"));
  EXPECT_FALSE(IsTlsEndpoint("10.0.0.1:80"));
  EXPECT_EQ(GrpcTarget("https://10.0.0.1:443/"), "10.0.0.1:443");
}

}  // namespace
}  // namespace omnirelay::transport
