// The sample processes over TLS and mTLS with real certificates made at test
// time (tls/test_certs.h), and the registry's authentication of
// registrations:
//   * a sample gRPC listener (StartGrpcServer: auth and worker) under mTLS
//     serves a client with a certificate from its CA and refuses one from
//     another CA, one without a certificate and a plaintext one;
//   * the registry over HTTPS with mTLS authenticates a registration by the
//     client certificate; no certificate / another CA / plaintext fail;
//   * an https:// registry URL never falls back to plaintext;
//   * a registry with neither a token nor client certificates does not start
//     (unless explicitly allowed), and a missing or wrong token is refused.
#include <gtest/gtest.h>

#include <filesystem>

#include "omnirelay/samples/process.h"
#include "omnirelay/samples/registry.h"
#include "omnirelay/samples/registry_client.h"
#include "omnirelay/samples/worker_service.h"
#include "omnirelay/tls/grpc_credentials.h"
#include "omnirelay/tls/test_certs.h"

namespace omnirelay::samples {
namespace {

using std::chrono::seconds;
using tls::testing::TestPki;

class SamplesTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tls::testing::MakeTempDir("omnirelay-samples-tls");
    pki_ = TestPki::Create(dir_, "mesh");
    other_ = TestPki::Create(dir_, "other");
    std::tie(server_cert_, server_key_) = pki_.Leaf("registry", "server");
    std::tie(client_cert_, client_key_) = pki_.Leaf("worker-1", "client");
    std::tie(rogue_cert_, rogue_key_) = other_.Leaf("rogue", "rogue");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  tls::TlsOptions ServerTls(tls::ClientAuth mode) const {
    return {.cert_file = server_cert_,
            .key_file = server_key_,
            .ca_file = pki_.ca_file,
            .client_auth = mode};
  }
  // A client trusting the right CA, presenting `cert` (none when empty).
  tls::TlsOptions ClientTls(const std::string& cert, const std::string& key) const {
    return {.cert_file = cert, .key_file = key, .ca_file = pki_.ca_file};
  }
  std::shared_ptr<tls::ContextSource> ServerSource(tls::ClientAuth mode) const {
    auto source = tls::ContextSource::Create(ServerTls(mode), tls::Role::kServer);
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *source : nullptr;
  }

  std::string dir_;
  TestPki pki_, other_;
  std::string server_cert_, server_key_, client_cert_, client_key_, rogue_cert_, rogue_key_;
};

// One MyServiceEcho through `credentials` to a worker behind StartGrpcServer.
grpc::Status Echo(const std::string& address,
                  const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
  auto stub = my_service::MyServiceAPI::NewStub(grpc::CreateChannel(address, credentials));
  grpc::ClientContext context;
  context.AddMetadata("session-id", "s-1");
  context.set_deadline(std::chrono::system_clock::now() + seconds(5));
  my_service::EchoRequest request;
  my_service::EchoResponse response;
  grpc::Status status = stub->MyServiceEcho(&context, request, &response);
  if (status.ok() && response.pod_name() != "pod-tls") {
    return grpc::Status(grpc::StatusCode::INTERNAL, "wrong pod " + response.pod_name());
  }
  return status;
}

TEST_F(SamplesTlsTest, SampleGrpcListenerUnderMtlsServesOnlyClientsOfItsCa) {
  WorkerOptions options;
  options.instance = "pod-tls";
  WorkerService worker(std::move(options));
  std::string address;
  auto server =
      StartGrpcServer("127.0.0.1:0", {&worker}, &address, ServerTls(tls::ClientAuth::kRequire));
  ASSERT_TRUE(server.ok()) << server.status();

  const grpc::Status good =
      Echo(address, tls::GrpcChannelCredentials(ClientTls(client_cert_, client_key_)));
  EXPECT_TRUE(good.ok()) << good.error_message();

  // A certificate from another CA, no certificate, plaintext: all refused at
  // the handshake, so the call never reaches the service.
  const grpc::Status wrong_ca = Echo(
      address, tls::GrpcChannelCredentials(
                   {.cert_file = rogue_cert_, .key_file = rogue_key_, .ca_file = pki_.ca_file}));
  EXPECT_EQ(wrong_ca.error_code(), grpc::StatusCode::UNAVAILABLE) << wrong_ca.error_message();
  const grpc::Status no_cert = Echo(address, tls::GrpcChannelCredentials(ClientTls("", "")));
  EXPECT_EQ(no_cert.error_code(), grpc::StatusCode::UNAVAILABLE) << no_cert.error_message();
  const grpc::Status plaintext = Echo(address, grpc::InsecureChannelCredentials());
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE) << plaintext.error_message();
  // A client that does not trust the server's CA refuses the server.
  const grpc::Status untrusted =
      Echo(address,
           tls::GrpcChannelCredentials(
               {.cert_file = client_cert_, .key_file = client_key_, .ca_file = other_.ca_file}));
  EXPECT_EQ(untrusted.error_code(), grpc::StatusCode::UNAVAILABLE) << untrusted.error_message();

  worker.Stop();
  (*server)->Shutdown(std::chrono::system_clock::now() + seconds(2));
}

TEST_F(SamplesTlsTest, RegistryOverMtlsAuthenticatesByClientCertificate) {
  // No token: the verified client certificate is the authentication.
  RegistryServer server(
      {.host = "127.0.0.1", .port = 0, .tls = ServerSource(tls::ClientAuth::kRequire)},
      {.ttl = seconds(30)});
  ASSERT_TRUE(server.Start().ok());
  const std::string url = "https://" + server.address();

  auto worker = RegistryClient::Create(url, seconds(5), ClientTls(client_cert_, client_key_));
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE(worker->secure());
  ASSERT_TRUE(worker->Register({"w1", "127.0.0.1:5001", "worker"}).ok());
  auto listed = worker->List("worker");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(*listed, (std::vector<Instance>{{"w1", "127.0.0.1:5001", "worker"}}));

  // No client certificate: the handshake fails (UNAVAILABLE naming why).
  auto anonymous = RegistryClient::Create(url, seconds(5), ClientTls("", ""));
  ASSERT_TRUE(anonymous.ok());
  const absl::Status no_cert = anonymous->Register({"w2", "127.0.0.1:5002", "worker"});
  EXPECT_EQ(no_cert.code(), absl::StatusCode::kUnavailable) << no_cert;
  // A certificate from another CA: refused too.
  auto rogue = RegistryClient::Create(
      url, seconds(5),
      tls::TlsOptions{.cert_file = rogue_cert_, .key_file = rogue_key_, .ca_file = pki_.ca_file});
  ASSERT_TRUE(rogue.ok());
  const absl::Status wrong_ca = rogue->Register({"w3", "127.0.0.1:5003", "worker"});
  EXPECT_EQ(wrong_ca.code(), absl::StatusCode::kUnavailable) << wrong_ca;
  // The client verifies the server: a client trusting another CA refuses it.
  auto untrusting = RegistryClient::Create(
      url, seconds(5),
      tls::TlsOptions{
          .cert_file = client_cert_, .key_file = client_key_, .ca_file = other_.ca_file});
  ASSERT_TRUE(untrusting.ok());
  EXPECT_EQ(untrusting->Register({"w4", "127.0.0.1:5004", "worker"}).code(),
            absl::StatusCode::kUnavailable);
  // Plaintext to the TLS port gets no answer a client could accept.
  auto plaintext = RegistryClient::Create(server.address(), seconds(5));
  ASSERT_TRUE(plaintext.ok());
  EXPECT_FALSE(plaintext->secure());
  EXPECT_FALSE(plaintext->Register({"w5", "127.0.0.1:5005", "worker"}).ok());

  EXPECT_EQ(server.registry().List().size(), 1u);  // only w1 got in
  server.Stop();
}

TEST_F(SamplesTlsTest, RegistryWithOptionalClientCertificatesTakesCertificateOrToken) {
  RegistryServer server(
      {.host = "127.0.0.1", .port = 0, .tls = ServerSource(tls::ClientAuth::kRequest)},
      {.ttl = seconds(30), .token = "registry-token-0123456789abcdef0123"});
  ASSERT_TRUE(server.Start().ok());
  const std::string url = "https://" + server.address();
  auto with_cert = RegistryClient::Create(url, seconds(5), ClientTls(client_cert_, client_key_));
  ASSERT_TRUE(with_cert.ok());
  EXPECT_TRUE(with_cert->Register({"by-cert", "127.0.0.1:1", "worker"}).ok());
  auto anonymous = RegistryClient::Create(url, seconds(5), ClientTls("", ""));
  ASSERT_TRUE(anonymous.ok());
  const absl::Status refused = anonymous->Register({"anon", "127.0.0.1:2", "worker"});
  EXPECT_EQ(refused.code(), absl::StatusCode::kInternal) << refused;
  EXPECT_NE(refused.message().find("answered 401"), std::string_view::npos) << refused;
  anonymous->set_token("registry-token-0123456789abcdef0123");
  EXPECT_TRUE(anonymous->Register({"by-token", "127.0.0.1:3", "worker"}).ok());
  auto listed = with_cert->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ(listed->at(0).id, "by-cert");
  EXPECT_EQ(listed->at(1).id, "by-token");
  server.Stop();
}

TEST_F(SamplesTlsTest, HttpsRegistryUrlNeverFallsBackToPlaintext) {
  RegistryServer plain({.host = "127.0.0.1", .port = 0}, {.token = "t-0123456789abcdef0123456789"});
  ASSERT_TRUE(plain.Start().ok());
  auto client = RegistryClient::Create("https://" + plain.address(), seconds(5),
                                       ClientTls(client_cert_, client_key_));
  ASSERT_TRUE(client.ok());
  client->set_token("t-0123456789abcdef0123456789");
  const absl::Status status = client->Register({"w1", "127.0.0.1:1", "worker"});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(plain.registry().List().empty());
  // Without TLS options an https:// URL still means TLS (system trust store).
  auto system_store = RegistryClient::Create("https://" + plain.address(), seconds(5));
  ASSERT_TRUE(system_store.ok());
  EXPECT_TRUE(system_store->secure());
  system_store->set_token("t-0123456789abcdef0123456789");
  EXPECT_EQ(system_store->Register({"w2", "127.0.0.1:2", "worker"}).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(plain.registry().List().empty());
  plain.Stop();

  EXPECT_EQ(RegistryClient::Create("grpc://127.0.0.1:1").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RegistryClient::Create("https://127.0.0.1:1", seconds(1),
                                   tls::TlsOptions{.ca_file = dir_ + "/missing-ca.crt"})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RegistryAuthTest, RefusesToStartWithoutAuthentication) {
  RegistryServer open({.host = "127.0.0.1", .port = 0}, {});
  const absl::Status status = open.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("--token-file"), std::string_view::npos) << status;
  EXPECT_FALSE(open.registry().options().allow_unauthenticated);

  // The explicit opt-out starts and lets anyone register.
  RegistryServer demo({.host = "127.0.0.1", .port = 0}, {.allow_unauthenticated = true});
  ASSERT_TRUE(demo.Start().ok());
  auto client = RegistryClient::Create(demo.address());
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE(client->Register({"w1", "127.0.0.1:1", "worker"}).ok());
  demo.Stop();
}

TEST(RegistryAuthTest, MissingOrWrongTokenIsRefused) {
  const std::string token = "the-registry-token-0123456789abcdef";
  RegistryServer server({.host = "127.0.0.1", .port = 0}, {.token = token});
  ASSERT_TRUE(server.Start().ok());
  auto client = RegistryClient::Create(server.address());
  ASSERT_TRUE(client.ok());
  const absl::Status missing = client->Register({"w1", "127.0.0.1:1", "worker"});
  EXPECT_NE(missing.message().find("answered 401"), std::string_view::npos) << missing;
  client->set_token(token.substr(0, token.size() - 1) + "X");  // same length, wrong
  EXPECT_NE(client->Register({"w1", "127.0.0.1:1", "worker"}).message().find("answered 401"),
            std::string_view::npos);
  client->set_token(token + "X");  // a prefix match is not enough
  EXPECT_FALSE(client->Register({"w1", "127.0.0.1:1", "worker"}).ok());
  EXPECT_FALSE(client->Unregister("w1").ok());
  EXPECT_TRUE(server.registry().List().empty());
  client->set_token(token);
  EXPECT_TRUE(client->Register({"w1", "127.0.0.1:1", "worker"}).ok());
  EXPECT_EQ(server.registry().List().size(), 1u);
  server.Stop();
}

}  // namespace
}  // namespace omnirelay::samples
