// Hooked frame routes (route_hook.h) between real sockets: a grpc++ client,
// the relay, real grpc++ upstream servers and a port nobody listens on. The
// session gateway's frame path rests on these rules (gateway_stream_test and
// tests/python/test_gateway.py cover the gateway's own decisions).
#include "omnirelay/h2relay/route_hook.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <future>

#include "omnirelay/core/metrics.h"
#include "omnirelay/h2relay/frame_relay.h"
#include "omnirelay/transport/grpc_transport.h"

// Designated initializers name only what a test case cares about.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace omnirelay::h2relay {
namespace {

using namespace std::chrono_literals;

// A grpc++ upstream: Echo returns the body, Fail an application error.
struct Upstream {
  explicit Upstream(std::string name) : name(std::move(name)) {
    dispatcher = std::make_shared<dispatcher::Dispatcher>("test");
    dispatcher::Procedure echo;
    echo.service = "test.Svc";
    echo.name = "Echo";
    echo.unary = [this](dispatcher::Request request, dispatcher::UnaryCallback done) {
      calls.fetch_add(1);
      dispatcher::Response response;
      response.headers.Add("x-upstream", this->name);
      response.body = std::move(request.body);
      done(std::move(response));
    };
    EXPECT_TRUE(dispatcher->Register(echo).ok());
    dispatcher::Procedure fail;
    fail.service = "test.Svc";
    fail.name = "Fail";
    fail.unary = [this](dispatcher::Request, dispatcher::UnaryCallback done) {
      calls.fetch_add(1);
      done(core::MakeStatus(absl::StatusCode::kDataLoss, "nope", "custom-code"));
    };
    EXPECT_TRUE(dispatcher->Register(fail).ok());
    EXPECT_TRUE(dispatcher->Start().ok());
    inbound = std::make_unique<transport::GrpcInbound>(
        transport::GrpcInboundOptions{.address = "127.0.0.1:0", .threads = 2}, dispatcher);
    EXPECT_TRUE(inbound->Start().ok());
  }
  ~Upstream() { inbound->Shutdown(0ms); }
  std::string address() const { return inbound->address(); }

  std::string name;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher;
  std::unique_ptr<transport::GrpcInbound> inbound;
  std::atomic<int> calls{0};
};

// host:port where nothing listens (connect is refused).
std::string DeadAddress() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
}

struct Record {
  std::atomic<int> failed{0};
  std::atomic<int> answered{0};
  std::atomic<int> finished{0};
  std::atomic<int> last_code{-1};
};

// Tries `targets` in order, one attempt each.
class ListCall final : public CallHook {
 public:
  ListCall(const std::vector<std::string>* targets, Record* record)
      : targets_(targets), record_(record) {}
  absl::StatusOr<HookTarget> Next() override {
    if (next_ >= targets_->size()) return absl::UnavailableError("none left");
    const size_t i = next_++;
    return HookTarget{i + 1, (*targets_)[i]};
  }
  void AttemptFailed(bool, std::string_view) override { record_->failed.fetch_add(1); }
  void AttemptAnswered() override { record_->answered.fetch_add(1); }
  void Finished(absl::StatusCode code) override {
    record_->last_code.store(static_cast<int>(code));
    record_->finished.fetch_add(1);
  }

 private:
  const std::vector<std::string>* targets_;
  Record* record_;
  size_t next_ = 0;
};

class ListHook final : public RouteHook {
 public:
  explicit ListHook(std::vector<std::string> targets) : targets_(std::move(targets)) {}
  absl::StatusOr<std::unique_ptr<CallHook>> OnHeaders(
      std::string_view path, std::span<const RelayHeader> headers) override {
    for (const auto& [k, v] : headers) {
      if (k == "x-deny") return absl::PermissionDeniedError("denied: " + v);
    }
    return std::make_unique<ListCall>(&targets_, &record);
  }
  std::chrono::milliseconds attempt_timeout() const override { return 5s; }
  Record record;

 private:
  std::vector<std::string> targets_;
};

struct Client {
  explicit Client(const std::string& address) {
    transport::PeerPoolOptions options{.chooser = "round-robin", .transport = "grpc"};
    auto pool = transport::MakeCoordinatorPeerPool({address}, options, core::SystemClock::Shared(),
                                                   std::make_shared<core::MetricsRegistry>());
    EXPECT_TRUE(pool.ok());
    outbound = std::make_shared<transport::GrpcOutbound>(
        transport::GrpcOutboundOptions{.name = "client", .endpoints = {address}}, *pool,
        core::SystemClock::Shared());
    EXPECT_TRUE(outbound->Start().ok());
  }
  ~Client() { outbound->Stop(); }
  absl::StatusOr<dispatcher::Response> Call(std::string method, std::string body,
                                            core::Headers headers = {}) {
    dispatcher::Request request;
    request.meta.service = "test.Svc";
    request.meta.procedure = std::move(method);
    request.meta.headers = std::move(headers);
    request.meta.deadline = core::SystemClock::Shared()->Now() + 20s;
    request.body = std::move(body);
    std::promise<absl::StatusOr<dispatcher::Response>> promise;
    auto future = promise.get_future();
    outbound->CallUnary(std::move(request), [&promise](absl::StatusOr<dispatcher::Response> r) {
      promise.set_value(std::move(r));
    });
    return future.get();
  }
  std::shared_ptr<transport::GrpcOutbound> outbound;
};

std::unique_ptr<FrameRelay> StartHooked(std::shared_ptr<RouteHook> hook) {
  auto relay = std::make_unique<FrameRelay>(FrameRelayOptions{
      .address = "127.0.0.1:0",
      .threads = 2,
      .routes = {FrameRoute{.prefix = "", .outbound = "hooked", .hook = std::move(hook)}}});
  EXPECT_TRUE(relay->Start().ok());
  return relay;
}

// A refused first target: the kept request bytes are replayed on the next
// one. 300 calls of 60 KiB move more bytes than one connection window
// (16 MiB), so a replayed byte whose window was returned twice, or never,
// would stall or break the inbound connection.
TEST(RouteHook, TransportFailureReplaysTheRequestOnTheNextTarget) {
  Upstream a("a");
  auto hook = std::make_shared<ListHook>(std::vector<std::string>{DeadAddress(), a.address()});
  auto relay = StartHooked(hook);
  Client client(relay->address());
  std::string body(60 * 1024, 'q');
  for (size_t i = 0; i < body.size(); i += 997) body[i] = static_cast<char>('a' + i % 26);
  constexpr int kCalls = 300;
  for (int i = 0; i < kCalls; ++i) {
    auto reply = client.Call("Echo", body);
    ASSERT_TRUE(reply.ok()) << i << ": " << reply.status();
    ASSERT_EQ(reply->body, body);
    EXPECT_EQ(reply->headers.Get("x-upstream").value_or(""), "a");
  }
  EXPECT_EQ(a.calls.load(), kCalls);
  EXPECT_EQ(hook->record.failed.load(), kCalls);
  EXPECT_EQ(hook->record.answered.load(), kCalls);
  EXPECT_EQ(hook->record.finished.load(), kCalls);
  EXPECT_EQ(hook->record.last_code.load(), 0);
}

// Bodies over kMaxReplayBytes are forwarded intact but not replayed.
TEST(RouteHook, LargeBodiesAreForwardedWithoutReplay) {
  Upstream a("a");
  auto hook = std::make_shared<ListHook>(std::vector<std::string>{a.address()});
  auto relay = StartHooked(hook);
  Client client(relay->address());
  std::string big(1 << 20, 'z');
  for (size_t i = 0; i < big.size(); i += 4099) big[i] = static_cast<char>('a' + i % 26);
  for (int i = 0; i < 3; ++i) {
    auto reply = client.Call("Echo", big);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->body, big);
  }
  auto hook2 = std::make_shared<ListHook>(std::vector<std::string>{DeadAddress(), a.address()});
  auto relay2 = StartHooked(hook2);
  Client client2(relay2->address());
  auto failed = client2.Call("Echo", big);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hook2->record.failed.load(), 1);
}

// Application statuses pass through without another attempt; the hook's own
// answers (on HEADERS, or when no target is left) reach the client as sent.
TEST(RouteHook, ApplicationStatusesPassAndHookAnswersReachTheClient) {
  Upstream a("a"), b("b");
  auto hook = std::make_shared<ListHook>(std::vector<std::string>{a.address(), b.address()});
  auto relay = StartHooked(hook);
  Client client(relay->address());
  auto failed = client.Call("Fail", "x");
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(failed.status().message(), "nope");
  EXPECT_EQ(core::ErrorCode(failed.status()).value_or(""), "custom-code");
  EXPECT_EQ(a.calls.load() + b.calls.load(), 1);
  EXPECT_EQ(hook->record.failed.load(), 0);
  EXPECT_EQ(hook->record.answered.load(), 1);
  EXPECT_EQ(hook->record.last_code.load(), static_cast<int>(absl::StatusCode::kDataLoss));

  core::Headers deny;
  deny.Add("x-deny", "yes");
  auto denied = client.Call("Echo", "x", deny);
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.status().message(), "denied: yes");
  EXPECT_EQ(a.calls.load() + b.calls.load(), 1);  // nothing was forwarded

  auto none = std::make_shared<ListHook>(std::vector<std::string>{DeadAddress(), DeadAddress()});
  auto relay2 = StartHooked(none);
  Client client2(relay2->address());
  auto exhausted = client2.Call("Echo", "x");
  ASSERT_FALSE(exhausted.ok());
  EXPECT_EQ(exhausted.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(exhausted.status().message(), "none left");
  EXPECT_EQ(none->record.failed.load(), 2);
}

}  // namespace
}  // namespace omnirelay::h2relay
