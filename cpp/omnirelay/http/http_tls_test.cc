// TLS and mTLS on the Beast listener and client with real certificates made
// at test time: valid, expired, wrong CA, missing client certificate, and a
// certificate rotated on disk while the server runs.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "omnirelay/http/http_server.h"
#include "omnirelay/tls/test_certs.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::http {
namespace {

using tls::testing::TestPki;

class HttpTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tls::testing::MakeTempDir("omnirelay-http-tls");
    pki_ = TestPki::Create(dir_, "mesh");
    other_ = TestPki::Create(dir_, "other");
    std::tie(server_cert_, server_key_) = pki_.Leaf("server", "server");
    std::tie(client_cert_, client_key_) = pki_.Leaf("client", "client");
  }
  void TearDown() override {
    if (server_) server_->Stop();
    std::filesystem::remove_all(dir_);
  }

  // Starts a server whose /whoami answers the verified client identity.
  void StartServer(tls::ClientAuth mode,
                   std::chrono::milliseconds reload = std::chrono::seconds(1)) {
    auto source = tls::ContextSource::Create({.cert_file = server_cert_,
                                              .key_file = server_key_,
                                              .ca_file = pki_.ca_file,
                                              .client_auth = mode,
                                              .reload_interval = reload},
                                             tls::Role::kServer);
    ASSERT_TRUE(source.ok()) << source.status();
    server_source_ = *source;
    server_ = std::make_unique<HttpServer>(
        HttpServerOptions{.host = "127.0.0.1", .port = 0, .threads = 2, .tls = server_source_});
    server_->Route("GET", "/whoami", [](const HttpRequest& request) {
      return HttpResponse::Text(200, (request.secure ? "tls " : "plain ") +
                                         (request.peer.empty() ? "-" : request.peer.Principal()));
    });
    ASSERT_TRUE(server_->Start().ok());
  }

  std::shared_ptr<tls::ContextSource> Client(const std::string& cert, const std::string& key,
                                             const std::string& ca) {
    auto source = tls::ContextSource::Create({.cert_file = cert, .key_file = key, .ca_file = ca},
                                             tls::Role::kClient);
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *source : nullptr;
  }

  absl::StatusOr<HttpClientResult> WhoAmI(tls::ContextSource* client) {
    return HttpCall("127.0.0.1", server_->port(), "GET", "/whoami", {}, {}, std::chrono::seconds(5),
                    client);
  }

  // The server records a failed handshake after it sent its alert, which may
  // be after the client gave up: poll (bounded).
  std::string ServerFailure() {
    for (int i = 0; i < 200 && server_source_->last_handshake_failure().empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return server_source_->last_handshake_failure();
  }

  std::string dir_;
  TestPki pki_, other_;
  std::string server_cert_, server_key_, client_cert_, client_key_;
  std::shared_ptr<tls::ContextSource> server_source_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(HttpTlsTest, MutualTlsBindsTheClientCertificateIdentity) {
  StartServer(tls::ClientAuth::kRequire);
  auto client = Client(client_cert_, client_key_, pki_.ca_file);
  auto reply = WhoAmI(client.get());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->body, "tls spiffe://omnirelay/client");
}

TEST_F(HttpTlsTest, PlainTextClientIsRefusedByATlsListener) {
  StartServer(tls::ClientAuth::kNone);
  auto reply =
      HttpCall("127.0.0.1", server_->port(), "GET", "/whoami", {}, {}, std::chrono::seconds(5));
  EXPECT_FALSE(reply.ok());
}

TEST_F(HttpTlsTest, ServerOnlyTlsLeavesThePeerAnonymous) {
  StartServer(tls::ClientAuth::kNone);
  auto client = Client("", "", pki_.ca_file);
  auto reply = WhoAmI(client.get());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->body, "tls -");
}

TEST_F(HttpTlsTest, MissingClientCertificateFailsTheHandshake) {
  StartServer(tls::ClientAuth::kRequire);
  auto client = Client("", "", pki_.ca_file);
  auto reply = WhoAmI(client.get());
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable);
  const std::string failure = ServerFailure();
  EXPECT_NE(failure.find("peer did not return a certificate"), std::string::npos) << failure;
}

TEST_F(HttpTlsTest, ExpiredClientCertificateIsRefusedAsExpired) {
  StartServer(tls::ClientAuth::kRequire);
  auto [cert, key] = pki_.Leaf("old-client", "old-client", /*not_after_seconds=*/-60);
  auto client = Client(cert, key, pki_.ca_file);
  auto reply = WhoAmI(client.get());
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(ServerFailure(), "certificate has expired");
}

TEST_F(HttpTlsTest, ClientCertificateFromAnotherCaIsRefused) {
  StartServer(tls::ClientAuth::kRequire);
  auto [cert, key] = other_.Leaf("stranger", "stranger");
  auto client = Client(cert, key, pki_.ca_file);
  auto reply = WhoAmI(client.get());
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(ServerFailure(), "unable to get local issuer certificate");
}

TEST_F(HttpTlsTest, ClientRefusesAServerFromAnotherCa) {
  StartServer(tls::ClientAuth::kNone);
  auto client = Client("", "", other_.ca_file);
  auto reply = WhoAmI(client.get());
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable);
  // The server sends its chain up to its (self-signed) root, which the client
  // does not trust; the server hears the client's "unknown ca" alert.
  EXPECT_NE(reply.status().message().find("self-signed certificate in certificate chain"),
            std::string::npos)
      << reply.status();
  EXPECT_NE(ServerFailure().find("unknown ca"), std::string::npos) << ServerFailure();
}

TEST_F(HttpTlsTest, RotatedServerCertificateIsServedWithoutRestart) {
  // Start with an expired certificate: clients refuse it, naming why.
  std::tie(server_cert_, server_key_) = pki_.Leaf("server", "server", -60);
  StartServer(tls::ClientAuth::kNone, std::chrono::milliseconds(50));
  auto client = Client("", "", pki_.ca_file);
  auto refused = WhoAmI(client.get());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("certificate has expired"), std::string::npos)
      << refused.status();
  // Rotate the files in place; new connections pick the new pair up.
  pki_.Leaf("server", "server");
  absl::StatusOr<HttpClientResult> reply = absl::UnknownError("not tried");
  for (int i = 0; i < 200 && !reply.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    reply = WhoAmI(client.get());
  }
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_GE(server_source_->reloads(), 1);
}

TEST(TlsOptionsTest, ErrorsNameTheFile) {
  auto missing = tls::ContextSource::Create(
      {.cert_file = "/nonexistent/node.crt", .key_file = "/nonexistent/node.key"},
      tls::Role::kServer);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("certFile '/nonexistent/node.crt'"), std::string::npos)
      << missing.status();
  auto no_ca =
      tls::Validate({.cert_file = "/x", .key_file = "/y", .client_auth = tls::ClientAuth::kRequire},
                    /*need_identity=*/false);
  EXPECT_FALSE(no_ca.ok());
}

TEST(TlsIdentityTest, SanThenThumbprint) {
  auto ca = tls::testing::MakeCertificate({.common_name = "ca", .is_ca = true}, nullptr);
  ASSERT_TRUE(ca.ok());
  auto leaf =
      tls::testing::MakeCertificate({.common_name = "n1", .uris = {"spiffe://omnirelay/n1"}}, &*ca);
  ASSERT_TRUE(leaf.ok());
  auto identity = tls::IdentityOfPem(leaf->cert);
  EXPECT_EQ(identity.san, "spiffe://omnirelay/n1");
  EXPECT_EQ(identity.thumbprint.size(), 64u);
  EXPECT_EQ(identity.Principal(), "spiffe://omnirelay/n1");
  tls::PeerIdentity anonymous{.san = "", .thumbprint = identity.thumbprint};
  EXPECT_EQ(anonymous.Principal(), "sha256:" + identity.thumbprint);
}

}  // namespace
}  // namespace omnirelay::http
