#include "omnirelay/benchmark/load_generator.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>
#include <thread>

#include "omnirelay/http/http_server.h"
#include "omnirelay/tls/grpc_credentials.h"
#include "omnirelay/tls/test_certs.h"

namespace omnirelay::benchmark {
namespace {

// A real gRPC server answering any method at the byte level:
//   /test.Echo/Ok    echoes the request
//   /test.Echo/Busy  RESOURCE_EXHAUSTED
//   /test.Echo/Slow  answers after 200 ms
//   /test.Echo/Meta  echoes the rpc-caller and x-extra metadata
class TestService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    class Reactor final : public grpc::ServerGenericBidiReactor {
     public:
      Reactor(grpc::GenericCallbackServerContext* context, TestService* service)
          : context_(context), service_(service) {
        StartRead(&request_);
      }
      void OnReadDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"));
          return;
        }
        {
          std::lock_guard lock(service_->mu);
          ++service_->calls;
          // No deadline reads back as "infinitely far"; anything within a
          // year is a real deadline the client sent.
          if (context_->deadline() <
              std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
            ++service_->calls_with_deadline;
          }
        }
        const std::string& method = context_->method();
        if (method == "/test.Echo/Busy") {
          Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "busy"));
          return;
        }
        if (method == "/test.Echo/Slow")
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (method == "/test.Echo/Meta") {
          std::string echoed;
          for (const auto& [key, value] : context_->client_metadata()) {
            if (key == "rpc-caller" || key == "x-extra") {
              echoed += std::string(key.data(), key.size()) + "=" +
                        std::string(value.data(), value.size()) + ";";
            }
          }
          {
            std::lock_guard lock(service_->mu);
            service_->last_metadata = echoed;
          }
          grpc::Slice slice(echoed);
          response_ = grpc::ByteBuffer(&slice, 1);
        } else {
          response_ = request_;
        }
        StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
      }
      void OnDone() override { delete this; }

     private:
      grpc::GenericCallbackServerContext* context_;
      TestService* service_;
      grpc::ByteBuffer request_;
      grpc::ByteBuffer response_;
    };
    return new Reactor(context, this);
  }

  std::mutex mu;
  int calls = 0;
  int calls_with_deadline = 0;
  std::string last_metadata;
};

class LoadGeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now()); }

  LoadOptions Options(const std::string& procedure) {
    LoadOptions options;
    options.procedure = procedure;
    options.addresses = {"127.0.0.1:" + std::to_string(port_)};
    options.concurrency = 4;
    options.requests = 200;
    options.body = "{\"payload\":\"load\"}";
    return options;
  }

  TestService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(LoadGeneratorTest, ClosedLoopRunsExactlyTheRequestedCount) {
  auto report = RunLoad(Options("test.Echo/Ok"));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->requests, 200u);
  EXPECT_EQ(report->successes, 200u);
  EXPECT_EQ(report->failures, 0u);
  EXPECT_EQ(report->status_counts.at("OK"), 200u);
  EXPECT_GT(report->throughput_rps, 0);
  EXPECT_GT(report->success_latency_ms.p99, 0);
  EXPECT_EQ(service_.calls, 200);
  // No --ttl/--deadline/--timeout: requests carry no deadline to the server.
  EXPECT_EQ(service_.calls_with_deadline, 0);
}

TEST_F(LoadGeneratorTest, FailuresAreCountedByStatusWithTheirOwnLatencies) {
  auto report = RunLoad(Options("/test.Echo/Busy"));
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->successes, 0u);
  EXPECT_EQ(report->failures, 200u);
  EXPECT_EQ(report->status_counts.at("RESOURCE_EXHAUSTED"), 200u);
  EXPECT_EQ(report->sample_errors.at("RESOURCE_EXHAUSTED"), "busy");
  EXPECT_EQ(report->success_latency_ms.count, 0u);
  EXPECT_EQ(report->failure_latency_ms.count, 200u);
  const auto json = report->ToJson();
  EXPECT_EQ(json["status_counts"]["RESOURCE_EXHAUSTED"], 200);
  EXPECT_TRUE(json["latency_ms"]["failure"].contains("p999"));
}

TEST_F(LoadGeneratorTest, DeadlineAlreadyPastFailsImmediately) {
  LoadOptions options = Options("test.Echo/Ok");
  options.deadline = std::chrono::system_clock::now() - std::chrono::seconds(1);
  options.requests = 50;
  auto report = RunLoad(options);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->status_counts.at("DEADLINE_EXCEEDED"), 50u);
  EXPECT_EQ(service_.calls, 0);  // never reached the server
  EXPECT_LT(report->failure_latency_ms.max, 100.0);
}

TEST_F(LoadGeneratorTest, TtlShorterThanServiceTimeIsDeadlineExceeded) {
  LoadOptions options = Options("test.Echo/Slow");
  options.ttl = std::chrono::milliseconds(50);
  options.requests = 8;
  auto report = RunLoad(options);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->status_counts.at("DEADLINE_EXCEEDED"), 8u);
  EXPECT_GE(report->failure_latency_ms.p50, 45.0);
  EXPECT_LT(report->failure_latency_ms.p50, 190.0);
}

TEST_F(LoadGeneratorTest, OpenLoopHoldsTheRequestedRate) {
  LoadOptions options = Options("test.Echo/Ok");
  options.requests.reset();
  options.rps = 200;
  options.duration = std::chrono::milliseconds(1000);
  auto report = RunLoad(options);
  ASSERT_TRUE(report.ok());
  // 200 rps for 1 s: the schedule issues 200 requests (±1 at the boundary).
  EXPECT_NEAR(static_cast<double>(report->requests), 200, 2);
  EXPECT_NEAR(report->throughput_rps, 200, 10);
}

TEST_F(LoadGeneratorTest, WarmupRequestsAreNotCounted) {
  LoadOptions options = Options("test.Echo/Ok");
  options.requests = 20;
  options.warmup = std::chrono::milliseconds(200);
  auto report = RunLoad(options);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->requests, 20u);
  EXPECT_GT(service_.calls, 20);  // the warm-up ones reached the server too
}

TEST_F(LoadGeneratorTest, MetadataAndHeadersAreSent) {
  LoadOptions options = Options("test.Echo/Meta");
  options.requests = 1;
  options.concurrency = 1;
  options.caller = "bench-test";
  options.headers = {{"x-extra", "42"}};
  auto report = RunLoad(options);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->successes, 1u);
  EXPECT_EQ(service_.last_metadata, "rpc-caller=bench-test;x-extra=42;");
}

// The load generator against a real gRPC server under mTLS, with real
// certificates made at test time.
class TlsLoadGeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tls::testing::MakeTempDir("omnirelay-benchmark-tls");
    pki_ = tls::testing::TestPki::Create(dir_, "bench");
    auto [server_cert, server_key] = pki_.Leaf("node", "server");
    std::tie(client_cert_, client_key_) = pki_.Leaf("benchmark", "client");
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0",
                             tls::GrpcServerCredentials({.cert_file = server_cert,
                                                         .key_file = server_key,
                                                         .ca_file = pki_.ca_file,
                                                         .client_auth = tls::ClientAuth::kRequire}),
                             &port_);
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now());
    std::filesystem::remove_all(dir_);
  }
  LoadOptions Options(const std::string& address, std::optional<tls::TlsOptions> tls) {
    LoadOptions options;
    options.procedure = "test.Echo/Ok";
    options.addresses = {address};
    options.concurrency = 2;
    options.requests = 50;
    options.body = "tls";
    options.tls = std::move(tls);
    return options;
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }

  std::string dir_;
  tls::testing::TestPki pki_;
  std::string client_cert_, client_key_;
  TestService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsLoadGeneratorTest, RunSucceedsOverMtlsWithTheCa) {
  const tls::TlsOptions client{
      .cert_file = client_cert_, .key_file = client_key_, .ca_file = pki_.ca_file};
  for (const std::string& address : {Address(), "https://" + Address()}) {
    auto report = RunLoad(Options(address, client));
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->successes, 50u) << address << " " << report->ToText();
    EXPECT_EQ(report->failures, 0u) << address;
  }
  EXPECT_EQ(service_.calls, 100);
}

TEST_F(TlsLoadGeneratorTest, RunFailsWithoutTheCaOrClientCertificate) {
  // https:// without TLS options: the system store does not know the test CA.
  auto no_ca = RunLoad(Options("https://" + Address(), std::nullopt));
  ASSERT_TRUE(no_ca.ok()) << no_ca.status();
  EXPECT_EQ(no_ca->successes, 0u);
  EXPECT_EQ(no_ca->status_counts.at("UNAVAILABLE"), 50u);
  EXPECT_NE(no_ca->sample_errors.at("UNAVAILABLE").find("certificate"), std::string::npos)
      << no_ca->sample_errors.at("UNAVAILABLE");
  // The CA but no client certificate: the mTLS server refuses.
  auto no_cert = RunLoad(Options(Address(), tls::TlsOptions{.ca_file = pki_.ca_file}));
  ASSERT_TRUE(no_cert.ok()) << no_cert.status();
  EXPECT_EQ(no_cert->successes, 0u);
  EXPECT_EQ(no_cert->failures, 50u);
  // Plaintext HTTP/2 to the TLS port gets nowhere.
  auto plaintext = RunLoad(Options(Address(), std::nullopt));
  ASSERT_TRUE(plaintext.ok()) << plaintext.status();
  EXPECT_EQ(plaintext->successes, 0u);
  EXPECT_EQ(service_.calls, 0);
  // An explicit plaintext scheme with TLS flags is a usage error, not plaintext.
  auto mixed = RunLoad(Options("http://" + Address(), tls::TlsOptions{.ca_file = pki_.ca_file}));
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mixed.status().message().find("--tls-*"), std::string_view::npos) << mixed.status();
}

TEST(LoadOptionsTest, ValidationNamesTheFlag) {
  LoadOptions options;
  EXPECT_NE(options.Validate().message().find("--procedure"), std::string::npos);
  options.procedure = "Process";
  EXPECT_NE(options.Validate().message().find("--service"), std::string::npos);
  options.service = "trace.Analytics";
  EXPECT_NE(options.Validate().message().find("--address"), std::string::npos);
  options.addresses = {"127.0.0.1:1"};
  EXPECT_NE(options.Validate().message().find("--duration"), std::string::npos);
  options.requests = 1;
  EXPECT_TRUE(options.Validate().ok());
  EXPECT_EQ(options.MethodPath(), "/trace.Analytics/Process");
  options.procedure = "trace.Analytics/Process";
  EXPECT_EQ(options.MethodPath(), "/trace.Analytics/Process");
  options.transport = "carrier-pigeon";
  EXPECT_NE(options.Validate().message().find("--transport"), std::string::npos);
}

TEST(HttpLoadTest, RpcStatusHeaderDecidesTheOutcome) {
  http::HttpServer server({.host = "127.0.0.1", .port = 0, .threads = 1});
  std::atomic<int> calls{0};
  server.Route("POST", "/", [&](const http::HttpRequest& request) {
    const int n = calls.fetch_add(1);
    EXPECT_EQ(request.headers.Get("rpc-procedure"), "trace.Analytics/Process");
    EXPECT_EQ(request.headers.Get("rpc-caller"), "omnirelay-benchmark");
    if (n % 2 == 0) return http::HttpResponse::Json(200, request.body);
    http::HttpResponse busy = http::HttpResponse::Text(429, "busy");
    busy.headers.Set("Rpc-Status", "RESOURCE_EXHAUSTED");
    return busy;
  });
  ASSERT_TRUE(server.Start().ok());
  LoadOptions options;
  options.transport = "http";
  options.procedure = "trace.Analytics/Process";
  options.url = "http://127.0.0.1:" + std::to_string(server.port()) + "/";
  options.concurrency = 2;
  options.requests = 100;
  auto report = RunLoad(options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->requests, 100u);
  EXPECT_EQ(report->status_counts.at("OK"), 50u);
  EXPECT_EQ(report->status_counts.at("RESOURCE_EXHAUSTED"), 50u);
}

}  // namespace
}  // namespace omnirelay::benchmark
