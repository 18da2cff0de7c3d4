#include "omnirelay/samples/worker_service.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "omnirelay/samples/process.h"

namespace omnirelay::samples {
namespace {

using my_service::EchoRequest;
using my_service::EchoResponse;
using my_service::ShutdownRequest;
using my_service::ShutdownResponse;

// One worker behind a real loopback gRPC server and a typed stub.
class WorkerFixture : public ::testing::Test {
 protected:
  void StartWorker(WorkerOptions options) {
    options.on_shutdown = [this] { shutdowns_.fetch_add(1); };
    service_ = std::make_unique<WorkerService>(std::move(options));
    auto server = StartGrpcServer("127.0.0.1:0", {service_.get()}, &address_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = my_service::MyServiceAPI::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }
  void SetUp() override {
    WorkerOptions options;
    options.instance = "pod-a";
    options.stream_interval = std::chrono::milliseconds(10);
    StartWorker(std::move(options));
  }
  void TearDown() override {
    if (service_) service_->Stop();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  static void Prepare(grpc::ClientContext* context, const std::string& session) {
    if (!session.empty()) context->AddMetadata("session-id", session);
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  grpc::Status Echo(const std::string& session, const std::string& value, EchoResponse* response) {
    grpc::ClientContext context;
    Prepare(&context, session);
    EchoRequest request;
    request.set_value(value);
    return stub_->MyServiceEcho(&context, request, response);
  }
  grpc::Status Shutdown(const std::string& session, ShutdownResponse* response) {
    grpc::ClientContext context;
    Prepare(&context, session);
    return stub_->MyServiceShutdown(&context, ShutdownRequest(), response);
  }

  std::unique_ptr<WorkerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<my_service::MyServiceAPI::Stub> stub_;
  std::string address_;
  std::atomic<int> shutdowns_{0};
};

TEST_F(WorkerFixture, FirstSessionBindsAndEchoFillsEveryField) {
  EchoResponse first;
  ASSERT_TRUE(Echo("session-1", "hello", &first).ok());
  EXPECT_EQ(first.client_value(), "hello");
  EXPECT_EQ(first.server_value(), "my_service");
  EXPECT_EQ(first.pod_name(), "pod-a");
  EXPECT_EQ(first.client_session_id(), "session-1");
  EXPECT_FALSE(first.server_session_id().empty());
  EXPECT_EQ(first.index(), 0);
  EXPECT_EQ(first.server_method(), "MyServiceEcho");
  EXPECT_EQ(service_->bound_session(), "session-1");

  EchoResponse second;
  ASSERT_TRUE(Echo("session-1", "again", &second).ok());
  EXPECT_EQ(second.server_session_id(), first.server_session_id());
  EXPECT_EQ(second.client_value(), "again");
}

TEST_F(WorkerFixture, OtherSessionIsSessionConflict) {
  EchoResponse response;
  ASSERT_TRUE(Echo("session-1", "x", &response).ok());
  const grpc::Status conflict = Echo("session-2", "x", &response);
  EXPECT_EQ(conflict.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(conflict.error_message(), "Session conflict: was=session-1, now=session-2");
  EXPECT_EQ(service_->bound_session(), "session-1");  // the binding is kept
}

TEST_F(WorkerFixture, MissingSessionIdIsUnauthenticated) {
  EchoResponse response;
  const grpc::Status status = Echo("", "x", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "missing session-id");
  EXPECT_FALSE(service_->bound_session().has_value());
}

TEST_F(WorkerFixture, ShutdownRules) {
  ShutdownResponse response;
  grpc::Status unbound = Shutdown("session-1", &response);
  EXPECT_EQ(unbound.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(unbound.error_message(), "Server session is not set");
  EXPECT_FALSE(service_->bound_session().has_value());  // Shutdown never binds

  EchoResponse echo;
  ASSERT_TRUE(Echo("session-1", "x", &echo).ok());
  grpc::Status mismatch = Shutdown("session-2", &response);
  EXPECT_EQ(mismatch.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(mismatch.error_message(),
            "Client session mismatch: client=session-2, server=session-1");
  EXPECT_EQ(shutdowns_.load(), 0);

  ASSERT_TRUE(Shutdown("session-1", &response).ok());
  EXPECT_EQ(response.pod_name(), "pod-a");
  EXPECT_EQ(response.client_session_id(), "session-1");
  EXPECT_EQ(response.server_session_id(), echo.server_session_id());
  EXPECT_EQ(response.server_method(), "MyServiceShutdown");
  EXPECT_EQ(shutdowns_.load(), 1);

  const grpc::Status after = Echo("session-1", "x", &echo);
  EXPECT_EQ(after.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(after.error_message(), "instance is shutting down");
}

TEST_F(WorkerFixture, SubscribeStreamsIncreasingIndexUntilCancelled) {
  grpc::ClientContext context;
  Prepare(&context, "session-1");
  EchoRequest request;
  request.set_value("sub");
  auto reader = stub_->MyServiceSubscribe(&context, request);
  EchoResponse message;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(reader->Read(&message)) << i;
    EXPECT_EQ(message.index(), i);
    EXPECT_EQ(message.server_method(), "MyServiceSubscribe");
    EXPECT_EQ(message.client_value(), "sub");
    EXPECT_EQ(message.pod_name(), "pod-a");
    EXPECT_EQ(message.client_session_id(), "session-1");
  }
  context.TryCancel();
  while (reader->Read(&message)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  // The stream bound the instance: another session conflicts on Subscribe too.
  grpc::ClientContext other;
  Prepare(&other, "session-2");
  auto conflict = stub_->MyServiceSubscribe(&other, request);
  EXPECT_FALSE(conflict->Read(&message));
  const grpc::Status status = conflict->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(status.error_message(), "Session conflict: was=session-1, now=session-2");
}

TEST_F(WorkerFixture, StopEndsRunningStream) {
  grpc::ClientContext context;
  Prepare(&context, "session-1");
  auto reader = stub_->MyServiceSubscribe(&context, EchoRequest());
  EchoResponse message;
  ASSERT_TRUE(reader->Read(&message));
  service_->Stop();
  int extra = 0;
  while (reader->Read(&message)) ++extra;
  EXPECT_LE(extra, 1);
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "instance is shutting down");
}

class BoundedWorkerTest : public WorkerFixture {
 protected:
  void SetUp() override {
    WorkerOptions options;
    options.instance = "pod-b";
    options.stream_interval = std::chrono::milliseconds(1);
    options.stream_max_messages = 3;
    StartWorker(std::move(options));
  }
};

TEST_F(BoundedWorkerTest, StreamEndsOkAtMaxMessages) {
  grpc::ClientContext context;
  Prepare(&context, "session-1");
  auto reader = stub_->MyServiceSubscribe(&context, EchoRequest());
  EchoResponse message;
  int count = 0;
  while (reader->Read(&message)) EXPECT_EQ(message.index(), count++);
  EXPECT_EQ(count, 3);
  EXPECT_TRUE(reader->Finish().ok());
}

class VerifyingWorkerTest : public WorkerFixture {
 protected:
  void SetUp() override {
    codec_ = std::make_shared<auth::JwtCodec>("0123456789abcdef0123456789abcdef");
    WorkerOptions options;
    options.instance = "pod-c";
    options.verifier = codec_;
    StartWorker(std::move(options));
  }
  std::shared_ptr<auth::JwtCodec> codec_;
};

TEST_F(VerifyingWorkerTest, ChecksTokenWhenConfigured) {
  EchoResponse response;
  grpc::Status missing = Echo("session-1", "x", &response);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(missing.error_message(), "missing or invalid token");
  // The session is checked before the token (the gateway's order).
  grpc::Status nothing = Echo("", "x", &response);
  EXPECT_EQ(nothing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(nothing.error_message(), "missing session-id");

  auto token = codec_->Issue("testuser", "session-1", "user", std::chrono::hours(1));
  ASSERT_TRUE(token.ok());
  grpc::ClientContext context;
  Prepare(&context, "session-1");
  context.AddMetadata("authorization", *token);
  EchoRequest request;
  ASSERT_TRUE(stub_->MyServiceEcho(&context, request, &response).ok());

  grpc::ClientContext mismatch;
  Prepare(&mismatch, "session-2");
  mismatch.AddMetadata("authorization", *token);
  const grpc::Status status = stub_->MyServiceEcho(&mismatch, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "missing or invalid token");
}

TEST(WorkerOptionsTest, SubscriptionPeriodDefaultsToTheReferenceFiveSeconds) {
  EXPECT_EQ(WorkerOptions{}.stream_interval, std::chrono::seconds(5));
}

}  // namespace
}  // namespace omnirelay::samples
