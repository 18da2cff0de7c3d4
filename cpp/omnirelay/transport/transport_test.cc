// The transports end to end, in process: a real gRPC server (GrpcInbound) and
// HTTP server (HttpInbound) in front of a dispatcher, called through the real
// GrpcOutbound / HttpOutbound and raw clients. Built into the sanitizer stages.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <future>
#include <mutex>
#include <thread>

#include "omnirelay/core/metrics.h"
#include "omnirelay/http/http_server.h"
#include "omnirelay/transport/grpc_transport.h"
#include "omnirelay/transport/http_transport.h"
#include "omnirelay/transport/transport_util.h"

namespace omnirelay::transport {
namespace {

using dispatcher::ProcedureKind;

std::shared_ptr<dispatcher::Dispatcher> TestDispatcher() {
  auto d = std::make_shared<dispatcher::Dispatcher>("test.Svc");
  dispatcher::Procedure echo;
  echo.service = "test.Svc";
  echo.name = "Echo";
  echo.unary = [](dispatcher::Request request, dispatcher::UnaryCallback done) {
    dispatcher::Response response;
    response.headers.Set("x-caller", request.meta.caller);
    response.headers.Set("x-has-deadline", request.meta.deadline ? "yes" : "no");
    response.body = request.body;
    done(std::move(response));
  };
  EXPECT_TRUE(d->Register(echo).ok());
  dispatcher::Procedure busy;
  busy.service = "test.Svc";
  busy.name = "Busy";
  busy.unary = [](dispatcher::Request, dispatcher::UnaryCallback done) {
    done(core::MakeStatus(absl::StatusCode::kResourceExhausted, "backend full", "backend-full"));
  };
  EXPECT_TRUE(d->Register(busy).ok());
  // Echoes every message until the client closes its side.
  dispatcher::Procedure duplex;
  duplex.service = "test.Svc";
  duplex.name = "Chat";
  duplex.kind = ProcedureKind::kDuplex;
  duplex.duplex = [](const core::RequestMeta&, dispatcher::ClientStream& in,
                     dispatcher::ServerStream& out) {
    while (auto message = in.Read()) {
      if (!out.Write(*message)) break;
    }
    return absl::OkStatus();
  };
  EXPECT_TRUE(d->Register(duplex).ok());
  EXPECT_TRUE(d->Start().ok());
  return d;
}

std::shared_ptr<PeerPool> PoolFor(const std::string& address) {
  PeerPoolOptions options;
  options.chooser = "round-robin";
  auto pool = MakeCoordinatorPeerPool({address}, options, core::SystemClock::Shared(),
                                      std::make_shared<core::MetricsRegistry>());
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *pool;
}

absl::StatusOr<dispatcher::Response> CallSync(dispatcher::Outbound& outbound,
                                              dispatcher::Request request) {
  std::promise<absl::StatusOr<dispatcher::Response>> promise;
  outbound.CallUnary(std::move(request), [&promise](absl::StatusOr<dispatcher::Response> r) {
    promise.set_value(std::move(r));
  });
  return promise.get_future().get();
}

// A raw generic gRPC unary call with arbitrary metadata (the outbound would
// re-derive rpc-* headers from RequestMeta, so it cannot send malformed ones).
grpc::Status RawUnary(const std::string& address, const std::string& method,
                      const std::vector<std::pair<std::string, std::string>>& metadata) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
  grpc::CompletionQueue cq;
  grpc::Slice slice("x", 1);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  auto reader = stub.PrepareUnaryCall(&ctx, method, request, &cq);
  reader->StartCall();
  int tag = 1;
  reader->Finish(&response, &status, &tag);
  void* got = nullptr;
  bool ok = false;
  EXPECT_TRUE(cq.Next(&got, &ok));
  cq.Shutdown();
  while (cq.Next(&got, &ok)) {
  }
  return status;
}

class GrpcTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dispatcher_ = TestDispatcher();
    GrpcInboundOptions inbound_options;
    inbound_options.address = "127.0.0.1:0";
    inbound_options.threads = 2;
    inbound_options.max_streams = 2;
    inbound_ = std::make_unique<GrpcInbound>(inbound_options, dispatcher_);
    ASSERT_TRUE(inbound_->Start().ok());
    GrpcOutboundOptions outbound_options;
    outbound_options.name = "self";
    outbound_options.service = "test.Svc";
    outbound_ = std::make_unique<GrpcOutbound>(outbound_options, PoolFor(inbound_->address()),
                                               core::SystemClock::Shared());
    ASSERT_TRUE(outbound_->Start().ok());
  }
  void TearDown() override {
    outbound_->Stop();
    inbound_->Shutdown(std::chrono::milliseconds(200));
  }
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::unique_ptr<GrpcInbound> inbound_;
  std::unique_ptr<GrpcOutbound> outbound_;
};

TEST_F(GrpcTransportTest, UnaryCarriesBodyMetaAndStatusAcrossTheWire) {
  dispatcher::Request request;
  request.meta.service = "test.Svc";
  request.meta.procedure = "Echo";
  request.meta.caller = "tester";
  request.meta.time_to_live = std::chrono::seconds(10);
  request.body = std::string("a\0b", 3);
  auto reply = CallSync(*outbound_, request);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->body, std::string("a\0b", 3));
  EXPECT_EQ(reply->headers.Get("x-caller"), "tester");
  EXPECT_EQ(reply->headers.Get("x-has-deadline"), "yes");

  request.meta.procedure = "Busy";
  auto busy = CallSync(*outbound_, request);
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core::ErrorCode(busy.status()), "backend-full");

  request.meta.procedure = "Missing";
  EXPECT_EQ(CallSync(*outbound_, request).status().code(), absl::StatusCode::kUnimplemented);
}

TEST_F(GrpcTransportTest, MalformedRpcTtlOrDeadlineIsInvalidArgumentNamingTheHeader) {
  const std::string address = inbound_->address();
  EXPECT_TRUE(RawUnary(address, "/test.Svc/Echo", {{"rpc-ttl-ms", "250"}}).ok());
  for (const auto& [header, value] :
       std::vector<std::pair<std::string, std::string>>{{"rpc-ttl-ms", "12abc"},
                                                        {"rpc-ttl-ms", "-5"},
                                                        {"rpc-ttl-ms", "1e3"},
                                                        {"rpc-ttl-ms", "99999999999999999999"},
                                                        {"rpc-deadline", "tomorrow"},
                                                        {"rpc-deadline", "2026-13-01T00:00:00Z"}}) {
    auto status = RawUnary(address, "/test.Svc/Echo", {{header, value}});
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << header << "=" << value;
    const std::string expected = header == "rpc-ttl-ms" ? "Rpc-Ttl-Ms" : "Rpc-Deadline";
    EXPECT_NE(status.error_message().find(expected), std::string::npos) << status.error_message();
  }
}

TEST_F(GrpcTransportTest, StreamsRunOnABoundedPoolAndShutdownJoinsThem) {
  core::RequestMeta meta;
  meta.service = "test.Svc";
  meta.procedure = "Chat";
  // Two streams fill the cap (max_streams = 2) and stay open.
  std::vector<std::unique_ptr<dispatcher::OutboundStream>> open;
  for (int i = 0; i < 2; ++i) {
    auto stream = outbound_->OpenStream(meta);
    ASSERT_TRUE(stream.ok()) << stream.status();
    ASSERT_TRUE((*stream)->Write("ping"));
    ASSERT_EQ((*stream)->Read(), "ping");  // its handler is running
    open.push_back(std::move(*stream));
  }
  auto third = outbound_->OpenStream(meta);
  ASSERT_TRUE(third.ok());
  (*third)->Write("ping");
  EXPECT_EQ((*third)->Read(), std::nullopt);
  auto refused = (*third)->Finish();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_EQ(core::ErrorCode(refused), "stream-capacity");

  // A finished stream frees its slot.
  ASSERT_TRUE(open[0]->WritesDone());
  EXPECT_EQ(open[0]->Read(), std::nullopt);
  EXPECT_TRUE(open[0]->Finish().ok());
  absl::Status fourth_status;
  for (int attempt = 0; attempt < 200; ++attempt) {  // the slot is freed just after Finish
    auto fourth = outbound_->OpenStream(meta);
    ASSERT_TRUE(fourth.ok());
    (*fourth)->Write("again");
    if ((*fourth)->Read() == "again") {
      (*fourth)->WritesDone();
      while ((*fourth)->Read()) {
      }
      fourth_status = (*fourth)->Finish();
      break;
    }
    fourth_status = (*fourth)->Finish();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(fourth_status.ok()) << fourth_status;
  // Shutting down with a stream still open: its handler is cancelled and
  // joined (ASan/TSan would flag a handler touching freed call state).
  inbound_->Shutdown(std::chrono::milliseconds(100));
  EXPECT_EQ(open[1]->Read(), std::nullopt);
  EXPECT_FALSE(open[1]->Finish().ok());
}

class HttpTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dispatcher_ = TestDispatcher();
    HttpInboundOptions options;
    options.address = "127.0.0.1:0";
    inbound_ = std::make_unique<HttpInbound>(options, dispatcher_);
    ASSERT_TRUE(inbound_->Start().ok());
  }
  void TearDown() override { inbound_->Stop(); }
  std::string Address() const {
    return "127.0.0.1:" + std::to_string(ParseHostPort(inbound_->address())->port);
  }
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::unique_ptr<HttpInbound> inbound_;
};

TEST_F(HttpTransportTest, OutboundRoundTripAndStatusMapping) {
  HttpOutboundOptions options;
  options.name = "self";
  options.service = "test.Svc";
  HttpOutbound outbound(options, PoolFor("http://" + Address() + "/"), core::SystemClock::Shared());
  ASSERT_TRUE(outbound.Start().ok());
  dispatcher::Request request;
  request.meta.service = "test.Svc";
  request.meta.procedure = "Echo";
  request.meta.caller = "http-tester";
  request.meta.time_to_live = std::chrono::seconds(10);
  request.body = "hello";
  auto reply = CallSync(outbound, request);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->body, "hello");
  EXPECT_EQ(reply->headers.Get("x-caller"), "http-tester");
  EXPECT_EQ(reply->headers.Get("x-has-deadline"), "yes");
  request.meta.procedure = "Busy";
  auto busy = CallSync(outbound, request);
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core::ErrorCode(busy.status()), "backend-full");
  outbound.Stop();
}

TEST_F(HttpTransportTest, MalformedRpcHeadersAre400NamingTheHeader) {
  auto hp = ParseHostPort(inbound_->address());
  ASSERT_TRUE(hp.ok());
  auto call = [&](const std::string& name, const std::string& value) {
    core::Headers headers;
    headers.Set("rpc-procedure", "Echo");
    headers.Set(name, value);
    auto reply = http::HttpCall("127.0.0.1", hp->port, "POST", "/", "x", headers);
    EXPECT_TRUE(reply.ok()) << reply.status();
    return reply.ok() ? *reply : http::HttpClientResult{};
  };
  EXPECT_EQ(call("rpc-ttl-ms", "1500").status, 200);
  EXPECT_EQ(call("rpc-deadline", "2099-01-01T00:00:00.000Z").status, 200);
  for (const auto& [name, value, expected] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"Rpc-Ttl-Ms", "15s", "Rpc-Ttl-Ms"},
           {"Rpc-Ttl-Ms", "1 5", "Rpc-Ttl-Ms"},
           {"Rpc-Ttl-Ms", "", "Rpc-Ttl-Ms"},
           {"Rpc-Deadline", "2026-11-23", "Rpc-Deadline"},
           {"Rpc-Deadline", "2026-11-23T10:00:00Zjunk", "Rpc-Deadline"}}) {
    auto reply = call(name, value);
    EXPECT_EQ(reply.status, 400) << name << "=" << value;
    EXPECT_NE(reply.body.find(expected), std::string::npos) << reply.body;
    EXPECT_EQ(reply.headers.Get("rpc-status"), "INVALID_ARGUMENT");
  }
}

// A backend that holds every call until it is cancelled on the server side,
// as a draining node's grpc::Server does to the calls it still holds when its
// grace period ends (the client then sees CANCELLED it never asked for).
class HoldingService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    class Reactor final : public grpc::ServerGenericBidiReactor {
     public:
      Reactor(HoldingService* service, grpc::GenericCallbackServerContext* context)
          : service_(service), context_(context) {
        StartRead(&request_);
      }
      void OnReadDone(bool) override {
        std::lock_guard<std::mutex> lock(service_->mu);
        service_->held.push_back(context_);
      }
      void OnCancel() override { Finish(grpc::Status(grpc::StatusCode::CANCELLED, "held")); }
      void OnDone() override {
        std::lock_guard<std::mutex> lock(service_->mu);
        std::erase(service_->held, context_);
        delete this;
      }

     private:
      HoldingService* service_;
      grpc::GenericCallbackServerContext* context_;
      grpc::ByteBuffer request_;
    };
    return new Reactor(this, context);
  }
  // Server-side cancel of every held call; returns how many there were.
  size_t CancelHeld() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto* context : held) context->TryCancel();
    return held.size();
  }
  std::mutex mu;
  std::vector<grpc::GenericCallbackServerContext*> held;
};

class GrpcOutboundCancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ && port_ > 0);
    GrpcOutboundOptions options;
    options.name = "held";
    options.service = "test.Svc";
    outbound_ = std::make_unique<GrpcOutbound>(
        options, PoolFor("127.0.0.1:" + std::to_string(port_)), core::SystemClock::Shared());
    ASSERT_TRUE(outbound_->Start().ok());
  }
  void TearDown() override {
    outbound_->Stop();
    server_->Shutdown(std::chrono::system_clock::now());
  }
  // Starts one call and waits (bounded) until the backend holds it.
  std::future<absl::StatusOr<dispatcher::Response>> StartHeldCall() {
    dispatcher::Request request;
    request.meta.service = "test.Svc";
    request.meta.procedure = "Echo";
    request.meta.time_to_live = std::chrono::seconds(30);
    auto promise = std::make_shared<std::promise<absl::StatusOr<dispatcher::Response>>>();
    auto future = promise->get_future();
    outbound_->CallUnary(std::move(request), [promise](absl::StatusOr<dispatcher::Response> r) {
      promise->set_value(std::move(r));
    });
    for (int i = 0; i < 500; ++i) {  // up to 10 s on a loaded machine
      {
        std::lock_guard<std::mutex> lock(service_.mu);
        if (!service_.held.empty()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return future;
  }

  HoldingService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<GrpcOutbound> outbound_;
};

TEST_F(GrpcOutboundCancelTest, BackendCancellingACallIsUnavailableToTheCaller) {
  auto future = StartHeldCall();
  ASSERT_EQ(service_.CancelHeld(), 1u);
  ASSERT_EQ(future.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  const auto result = future.get();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_NE(result.status().message().find("backend cancelled the call"), std::string_view::npos)
      << result.status();
}

TEST_F(GrpcOutboundCancelTest, BackendShutdownCancellingACallIsUnavailable) {
  auto future = StartHeldCall();
  server_->Shutdown(std::chrono::system_clock::now());  // cancels the held call
  ASSERT_EQ(future.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_EQ(future.get().status().code(), absl::StatusCode::kUnavailable);
}

TEST(UnrequestedCancelTest, OnlyAnUnrequestedCancelBecomesUnavailable) {
  const absl::Status cancelled = absl::CancelledError("Cancelled");
  EXPECT_EQ(UnrequestedCancelIsUnavailable(cancelled, false).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(UnrequestedCancelIsUnavailable(cancelled, true).code(), absl::StatusCode::kCancelled);
  for (const absl::Status& other :
       {absl::OkStatus(), absl::DeadlineExceededError("late"), absl::ResourceExhaustedError("busy"),
        absl::UnavailableError("down")}) {
    EXPECT_EQ(UnrequestedCancelIsUnavailable(other, false), other);
  }
}

TEST_F(GrpcTransportTest, StreamTheCallerCancelledStaysCancelled) {
  core::RequestMeta meta;
  meta.service = "test.Svc";
  meta.procedure = "Chat";
  auto stream = outbound_->OpenStream(meta);
  ASSERT_TRUE(stream.ok()) << stream.status();
  (*stream)->Cancel();
  EXPECT_EQ((*stream)->Finish().code(), absl::StatusCode::kCancelled);
}

TEST(TransportUtilTest, ApplyRpcHeadersIsStrict) {
  core::RequestMeta meta;
  meta.headers.Set("rpc-ttl-ms", "0");
  meta.headers.Set("rpc-deadline", "2030-01-02T03:04:05.5+01:00");
  ASSERT_TRUE(ApplyRpcHeaders(meta).ok());
  EXPECT_EQ(meta.time_to_live, std::chrono::milliseconds(0));
  ASSERT_TRUE(meta.deadline.has_value());
  core::RequestMeta too_long;
  too_long.headers.Set("rpc-ttl-ms", std::to_string(kMaxTtlMs + 1));
  EXPECT_EQ(ApplyRpcHeaders(too_long).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace omnirelay::transport
