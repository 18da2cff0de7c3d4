// Live stream transfer through a real gateway (issue 16): loopback gRPC
// servers running the worker sample behind a Gateway with a static sticky
// cluster. Exercises ProxyCall's transfer path (replay after the first
// response, one client write at a time, attempt hand-over) so the ASan/UBSan
// stage covers it. Not labelled `tsan`: Debian's gRPC is not instrumented.
// The multi-process version (SIGKILL, registry) is tests/python/test_gateway.py.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "my_service/my_service.grpc.pb.h"
#include "omnirelay/gateway/gateway.h"
#include "omnirelay/samples/process.h"
#include "omnirelay/samples/worker_service.h"

namespace omnirelay::gateway {
namespace {

constexpr char kSubscribe[] = "/my_service.MyServiceAPI/MyServiceSubscribe";

struct Worker {
  std::unique_ptr<samples::WorkerService> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  bool stopped = false;

  // A graceful stop: running streams end UNAVAILABLE "instance is shutting
  // down" (a transport-level failure for the gateway), then the listener goes.
  void Stop() {
    if (stopped) return;
    stopped = true;
    service->Stop();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
};

class GatewayStreamTest : public ::testing::Test {
 protected:
  void StartWorkers(int count, int max_messages = 0) {
    for (int i = 0; i < count; ++i) {
      samples::WorkerOptions options;
      options.instance = "pod-" + std::to_string(i + 1);
      options.stream_interval = std::chrono::milliseconds(20);
      options.stream_max_messages = max_messages;
      auto worker = std::make_unique<Worker>();
      worker->service = std::make_unique<samples::WorkerService>(std::move(options));
      auto server =
          samples::StartGrpcServer("127.0.0.1:0", {worker->service.get()}, &worker->address);
      ASSERT_TRUE(server.ok()) << server.status();
      worker->server = std::move(*server);
      by_pod_["pod-" + std::to_string(i + 1)] = worker.get();
      workers_.push_back(std::move(worker));
    }
  }

  void StartGateway(bool transfer_streams,
                    std::chrono::milliseconds attempt_timeout = std::chrono::seconds(5),
                    std::vector<std::string> extra_endpoints = {}) {
    config::GatewayConfig config;
    config.address = "127.0.0.1:0";
    config::GatewayClusterConfig cluster;
    cluster.name = "workers";
    for (const auto& w : workers_) cluster.endpoints.push_back(w->address);
    for (const auto& e : extra_endpoints) cluster.endpoints.push_back(e);
    config.clusters["workers"] = cluster;
    config::GatewayRouteConfig route;
    route.prefix = "/my_service.MyServiceAPI/MyService";
    route.cluster = "workers";
    route.authorization = "none";  // admission_test covers the token checks
    route.balancer = "sticky";
    route.sticky_header = "session-id";
    if (transfer_streams) route.transfer_streams = {kSubscribe};
    config.routes.push_back(route);
    config.max_attempts = 3;
    config.attempt_timeout = attempt_timeout;
    auto gateway = Gateway::Create(config, std::make_shared<core::MetricsRegistry>());
    ASSERT_TRUE(gateway.ok()) << gateway.status();
    gateway_ = std::move(*gateway);
    ASSERT_TRUE(gateway_->Start().ok());
    stub_ = my_service::MyServiceAPI::NewStub(
        grpc::CreateChannel(gateway_->address(), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (gateway_) gateway_->Stop();
    for (auto& w : workers_) w->Stop();
    for (int fd : hung_) ::close(fd);
  }

  // A TCP listener that never accepts: connects complete in the kernel's
  // backlog, nothing ever answers (a hung instance). Its address sorts before
  // every worker's, so a new session's first pick (rotation over the sorted
  // ids; static ids are the addresses) is the hung one.
  std::string HungListenerFirst() {
    std::string lowest;
    for (const auto& w : workers_) {
      if (lowest.empty() || w->address < lowest) lowest = w->address;
    }
    for (int tries = 0; tries < 200; ++tries) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof(addr);
      if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd, 16) != 0 ||
          ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        ::close(fd);
        continue;
      }
      hung_.push_back(fd);
      std::string address = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
      if (address < lowest) return address;
    }
    ADD_FAILURE() << "no free port sorting before " << lowest;
    return "";
  }

  absl::StatusOr<my_service::EchoResponse> Echo(const std::string& session) {
    grpc::ClientContext context;
    context.AddMetadata("session-id", session);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    my_service::EchoRequest request;
    request.set_value("unary");
    my_service::EchoResponse reply;
    grpc::Status status = stub_->MyServiceEcho(&context, request, &reply);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          status.error_message());
    }
    return reply;
  }

  std::vector<int> hung_;

  std::unique_ptr<grpc::ClientReader<my_service::EchoResponse>> Subscribe(
      grpc::ClientContext* context, const std::string& session) {
    context->AddMetadata("session-id", session);
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    my_service::EchoRequest request;
    request.set_value("live");
    return stub_->MyServiceSubscribe(context, request);
  }

  std::map<std::string, std::string> Bindings() {
    return gateway_->Introspect()["clusters"]["workers"]["bindings"]
        .get<std::map<std::string, std::string>>();
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  std::map<std::string, Worker*> by_pod_;
  std::unique_ptr<Gateway> gateway_;
  std::unique_ptr<my_service::MyServiceAPI::Stub> stub_;
};

// Reads until `want` messages came from a pod other than `pod`; the messages
// still from `pod` must continue its index sequence.
std::vector<my_service::EchoResponse> ReadUntilMoved(
    grpc::ClientReader<my_service::EchoResponse>* reader, const std::string& pod, int next_index,
    int want) {
  std::vector<my_service::EchoResponse> moved;
  my_service::EchoResponse reply;
  while (static_cast<int>(moved.size()) < want && reader->Read(&reply)) {
    if (moved.empty() && reply.pod_name() == pod) {
      EXPECT_EQ(reply.index(), next_index++);
      continue;
    }
    moved.push_back(reply);
  }
  return moved;
}

// The frame path (dataPath auto): a unary call whose instance hangs is
// replayed elsewhere after attemptTimeout; one whose instance stopped (the
// worker's "instance is shutting down", then a refused connect) is replayed
// on the next instance at once — the relay keeps the request bytes until the
// first response message.
TEST_F(GatewayStreamTest, FramePathReplaysUnaryCallsAfterAHangAndAStop) {
  StartWorkers(2);
  const std::string hung = HungListenerFirst();
  ASSERT_FALSE(hung.empty());
  // Generous: a healthy worker must answer within it on a loaded 2-core host
  // (300 ms timed out healthy workers there about one run in eight).
  const auto attempt_timeout = std::chrono::milliseconds(1000);
  StartGateway(false, attempt_timeout, {hung});
  ASSERT_TRUE(gateway_->Introspect()["frameRelay"].get<bool>());
  const auto started = std::chrono::steady_clock::now();
  auto first = Echo("s-hang");
  ASSERT_TRUE(first.ok()) << first.status();
  // The hung instance got the first attempt and cost one attempt timeout.
  EXPECT_GE(std::chrono::steady_clock::now() - started, attempt_timeout);
  EXPECT_EQ(first->client_session_id(), "s-hang");
  const std::string pod = first->pod_name();
  EXPECT_EQ(Bindings(), (std::map<std::string, std::string>{{"s-hang", by_pod_.at(pod)->address}}));
  // Sticky from here on.
  auto again = Echo("s-hang");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->pod_name(), pod);
  EXPECT_EQ(again->server_session_id(), first->server_session_id());

  by_pod_.at(pod)->Stop();
  auto moved = Echo("s-hang");
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_NE(moved->pod_name(), pod);
  EXPECT_NE(moved->server_session_id(), first->server_session_id());
  EXPECT_EQ(
      Bindings(),
      (std::map<std::string, std::string>{{"s-hang", by_pod_.at(moved->pod_name())->address}}));
  // Nothing left that answers: the contract's answer, not a transport error.
  by_pod_.at(moved->pod_name())->Stop();
  auto none = Echo("s-hang");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(none.status().message(), "backend service unavailable");
}

TEST_F(GatewayStreamTest, LiveStreamContinuesOnAnotherInstanceThenEndsUnavailable) {
  StartWorkers(3);
  StartGateway(true);
  grpc::ClientContext context;
  auto reader = Subscribe(&context, "s-1");
  my_service::EchoResponse reply;
  ASSERT_TRUE(reader->Read(&reply));
  const std::string first_pod = reply.pod_name();
  const std::string first_server_session = reply.server_session_id();
  EXPECT_EQ(reply.index(), 0);

  std::vector<std::string> dead = {first_pod};
  by_pod_.at(first_pod)->Stop();
  std::string pod = first_pod;
  for (int hop = 0; hop < 2; ++hop) {
    auto moved = ReadUntilMoved(reader.get(), pod, hop == 0 ? 1 : 3, 3);
    ASSERT_EQ(moved.size(), 3u) << "the stream ended instead of moving (hop " << hop << ")";
    const std::string next = moved[0].pod_name();
    for (const auto& d : dead) EXPECT_NE(next, d);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(moved[i].pod_name(), next);
      EXPECT_EQ(moved[i].index(), i);  // a new server session starts at 0
      EXPECT_EQ(moved[i].client_value(), "live");
      EXPECT_EQ(moved[i].client_session_id(), "s-1");
      EXPECT_EQ(moved[i].server_method(), "MyServiceSubscribe");
    }
    EXPECT_NE(moved[0].server_session_id(), first_server_session);
    EXPECT_EQ(Bindings(), (std::map<std::string, std::string>{{"s-1", by_pod_.at(next)->address}}));
    pod = next;
    dead.push_back(pod);
    by_pod_.at(pod)->Stop();
  }
  // Every instance is gone: the stream ends with the gateway's answer.
  while (reader->Read(&reply)) EXPECT_EQ(reply.pod_name(), pod);
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "backend service unavailable");
  EXPECT_TRUE(Bindings().empty());
}

TEST_F(GatewayStreamTest, ApplicationEndOfStreamPassesThroughWithoutTransfer) {
  StartWorkers(2, /*max_messages=*/4);
  StartGateway(true);
  grpc::ClientContext context;
  auto reader = Subscribe(&context, "s-2");
  my_service::EchoResponse reply;
  std::vector<int> indices;
  std::string pod;
  while (reader->Read(&reply)) {
    indices.push_back(reply.index());
    if (pod.empty()) pod = reply.pod_name();
    EXPECT_EQ(reply.pod_name(), pod);
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(indices, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(Bindings(), (std::map<std::string, std::string>{{"s-2", by_pod_.at(pod)->address}}));
}

TEST_F(GatewayStreamTest, ClientCancelIsNotATransfer) {
  StartWorkers(2);
  StartGateway(true);
  std::string pod;
  {
    grpc::ClientContext context;
    auto reader = Subscribe(&context, "s-3");
    my_service::EchoResponse reply;
    ASSERT_TRUE(reader->Read(&reply));
    pod = reply.pod_name();
    context.TryCancel();
    while (reader->Read(&reply)) EXPECT_EQ(reply.pod_name(), pod);
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_EQ(Bindings(), (std::map<std::string, std::string>{{"s-3", by_pod_.at(pod)->address}}));
}

TEST_F(GatewayStreamTest, WithoutTransferStreamsTheFailureReachesTheClient) {
  StartWorkers(2);
  StartGateway(false);
  grpc::ClientContext context;
  auto reader = Subscribe(&context, "s-4");
  my_service::EchoResponse reply;
  ASSERT_TRUE(reader->Read(&reply));
  const std::string pod = reply.pod_name();
  by_pod_.at(pod)->Stop();
  while (reader->Read(&reply)) EXPECT_EQ(reply.pod_name(), pod);
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "instance is shutting down");  // the worker's, as is
  EXPECT_TRUE(Bindings().empty());                                 // the binding ended all the same
}

}  // namespace
}  // namespace omnirelay::gateway
