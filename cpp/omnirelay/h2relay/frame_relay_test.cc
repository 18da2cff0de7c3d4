// The frame relay between real sockets: a real grpc++ client (GrpcOutbound),
// the relay, and real in-process grpc++ servers (GrpcInbound) as upstreams.
#include "omnirelay/h2relay/frame_relay.h"

// Designated initializers name only what a test case cares about.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <future>
#include <thread>

#include "omnirelay/core/metrics.h"
#include "omnirelay/transport/grpc_transport.h"

namespace omnirelay::h2relay {
namespace {

using dispatcher::Procedure;
using dispatcher::ProcedureKind;
using namespace std::chrono_literals;

Procedure Make(std::string service, std::string name, ProcedureKind kind = ProcedureKind::kUnary) {
  Procedure p;
  p.service = std::move(service);
  p.name = std::move(name);
  p.kind = kind;
  return p;
}

// An upstream gRPC server (grpc++) with a few test procedures.
struct Upstream {
  explicit Upstream(std::string name) : name(std::move(name)) {
    dispatcher = std::make_shared<dispatcher::Dispatcher>("test");
    Procedure echo = Make("test.Svc", "Echo");
    echo.unary = [this](dispatcher::Request request, dispatcher::UnaryCallback done) {
      calls.fetch_add(1);
      dispatcher::Response response;
      response.headers.Add("x-upstream", this->name);
      if (auto v = request.meta.headers.Get("x-custom"))
        response.headers.Add("x-seen", std::string(*v));
      response.headers.Add("x-caller", request.meta.caller);
      response.body = std::move(request.body);
      done(std::move(response));
    };
    EXPECT_TRUE(dispatcher->Register(echo).ok());
    Procedure fail = Make("test.Svc", "Fail");
    fail.unary = [](dispatcher::Request, dispatcher::UnaryCallback done) {
      done(core::MakeStatus(absl::StatusCode::kDataLoss, "nope: 100%", "custom-code"));
    };
    EXPECT_TRUE(dispatcher->Register(fail).ok());
    Procedure slow = Make("test.Svc", "Slow");
    slow.unary = [this](dispatcher::Request request, dispatcher::UnaryCallback done) {
      in_slow.fetch_add(1);
      std::this_thread::sleep_for(500ms);
      in_slow.fetch_sub(1);
      done(dispatcher::Response{.headers = {}, .body = request.body});
    };
    EXPECT_TRUE(dispatcher->Register(slow).ok());
    Procedure stream = Make("test.Svc", "Stream", ProcedureKind::kServerStream);
    stream.server_stream = [](const dispatcher::Request& request, dispatcher::ServerStream& out) {
      for (int i = 0; i < 5; ++i) {
        if (!out.Write(request.body + std::to_string(i))) return absl::CancelledError("gone");
      }
      return absl::OkStatus();
    };
    EXPECT_TRUE(dispatcher->Register(stream).ok());
    Procedure duplex = Make("test.Svc", "Duplex", ProcedureKind::kDuplex);
    duplex.duplex = [this](const core::RequestMeta&, dispatcher::ClientStream& in,
                           dispatcher::ServerStream& out) {
      while (auto message = in.Read()) {
        if (!out.Write("re:" + *message)) break;
      }
      duplex_ended.fetch_add(1);
      return absl::OkStatus();
    };
    EXPECT_TRUE(dispatcher->Register(duplex).ok());
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
  std::atomic<int> in_slow{0};
  std::atomic<int> duplex_ended{0};
};

std::shared_ptr<transport::PeerPool> Pool(std::vector<std::string> addresses, int cap = 0,
                                          int breaker_failures = 0) {
  transport::PeerPoolOptions options{.chooser = "round-robin",
                                     .max_in_flight_per_peer = cap,
                                     .breaker_consecutive_failures = breaker_failures,
                                     .breaker_open_delay = std::chrono::seconds(30),
                                     .service = "test.Svc",
                                     .transport = "grpc"};
  auto pool =
      transport::MakeCoordinatorPeerPool(std::move(addresses), options, core::SystemClock::Shared(),
                                         std::make_shared<core::MetricsRegistry>());
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *pool;
}

// A grpc++ client pointed at the relay.
struct Client {
  explicit Client(const std::string& address) {
    outbound = std::make_shared<transport::GrpcOutbound>(
        transport::GrpcOutboundOptions{.name = "client", .endpoints = {address}}, Pool({address}),
        core::SystemClock::Shared());
    EXPECT_TRUE(outbound->Start().ok());
  }
  ~Client() { outbound->Stop(); }
  absl::StatusOr<dispatcher::Response> Call(std::string method, std::string body,
                                            std::optional<core::Duration> timeout = std::nullopt,
                                            core::Headers headers = {}) {
    dispatcher::Request request;
    request.meta.service = "test.Svc";
    request.meta.procedure = std::move(method);
    request.meta.caller = "tester";
    request.meta.headers = std::move(headers);
    if (timeout) request.meta.deadline = core::SystemClock::Shared()->Now() + *timeout;
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

std::unique_ptr<FrameRelay> StartRelay(std::vector<FrameRoute> routes, std::string fallback = "",
                                       std::shared_ptr<dispatcher::Dispatcher> d = nullptr,
                                       uint32_t max_header_bytes = 64 * 1024) {
  auto relay =
      std::make_unique<FrameRelay>(FrameRelayOptions{.address = "127.0.0.1:0",
                                                     .threads = 2,
                                                     .routes = std::move(routes),
                                                     .fallback = std::move(fallback),
                                                     .dispatcher = std::move(d),
                                                     .max_header_bytes = max_header_bytes});
  EXPECT_TRUE(relay->Start().ok());
  return relay;
}

template <typename F>
bool Eventually(F predicate, std::chrono::milliseconds limit = 5000ms) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (predicate()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return predicate();
}

TEST(FrameRelay, UnaryCallsCrossWithMetadataAndSpreadOverPeers) {
  Upstream a("a"), b("b");
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = Pool({a.address(), b.address()})}});
  Client client(relay->address());
  std::set<std::string> seen;
  for (int i = 0; i < 6; ++i) {
    core::Headers headers;
    headers.Add("x-custom", "v" + std::to_string(i));
    auto reply = client.Call("Echo", "hello-" + std::to_string(i), std::nullopt, headers);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->body, "hello-" + std::to_string(i));
    EXPECT_EQ(reply->headers.Get("x-seen").value_or(""), "v" + std::to_string(i));
    EXPECT_EQ(reply->headers.Get("x-caller").value_or(""), "tester");
    seen.insert(std::string(reply->headers.Get("x-upstream").value_or("")));
  }
  EXPECT_EQ(seen, (std::set<std::string>{"a", "b"}));
  // A 1 MiB body is pumped across flow-control windows intact.
  std::string big(1 << 20, 'z');
  for (size_t i = 0; i < big.size(); i += 4099) big[i] = static_cast<char>('a' + i % 26);
  // More bytes than one connection window (16 MiB) in each direction: every
  // byte's window must come back, also for streams that closed before their
  // buffered bytes were forwarded, or the connections stall.
  for (int i = 0; i < 40; ++i) {  // round robin: 20 MiB through each peer's connection
    auto reply = client.Call("Echo", big, 20s);
    ASSERT_TRUE(reply.ok()) << i << ": " << reply.status();
    ASSERT_EQ(reply->body, big);
  }
  EXPECT_TRUE(Eventually([&] { return relay->active_calls() == 0; }));
}

TEST(FrameRelay, StatusAndErrorCodeCrossUnchangedAndReachTheLease) {
  Upstream a("a");
  auto pool = Pool({a.address()});
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = pool}});
  Client client(relay->address());
  auto reply = client.Call("Fail", "x");
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(reply.status().message(), "nope: 100%");
  EXPECT_EQ(core::ErrorCode(reply.status()).value_or(""), "custom-code");
  ASSERT_TRUE(client.Call("Echo", "ok").ok());
  EXPECT_TRUE(Eventually([&] {
    auto peers = pool->Snapshot()["peers"][0];
    return peers["failures"] == 1 && peers["successes"] == 1 && peers["inFlight"] == 0;
  })) << pool->Snapshot().dump();
}

TEST(FrameRelay, DeadlineCrossesAsGrpcTimeoutAndExpires) {
  Upstream a("a");
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = Pool({a.address()})}});
  Client client(relay->address());
  const auto started = std::chrono::steady_clock::now();
  auto reply = client.Call("Slow", "x", 150ms);
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kDeadlineExceeded) << reply.status();
  EXPECT_LT(std::chrono::steady_clock::now() - started, 450ms);
  // With time to spare the same call succeeds (the deadline is forwarded, not invented).
  auto ok = client.Call("Slow", "y", 5s);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->body, "y");
  // A free peer is leased on the loop: no call went through the acquire threads.
  EXPECT_EQ(relay->acquire_handoffs(), 0u);
}

TEST(FrameRelay, StreamsArePumpedAndClientCancelResetsUpstream) {
  Upstream a("a");
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = Pool({a.address()})}});
  Client client(relay->address());
  core::RequestMeta meta{.service = "test.Svc", .procedure = "Stream"};
  auto stream = client.outbound->OpenStream(meta);
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE((*stream)->Write("m"));
  ASSERT_TRUE((*stream)->WritesDone());
  std::vector<std::string> got;
  while (auto m = (*stream)->Read()) got.push_back(*m);
  EXPECT_EQ(got, (std::vector<std::string>{"m0", "m1", "m2", "m3", "m4"}));
  EXPECT_TRUE((*stream)->Finish().ok());

  meta.procedure = "Duplex";
  auto duplex = client.outbound->OpenStream(meta);
  ASSERT_TRUE(duplex.ok());
  for (std::string m : {"x", "y"}) {
    ASSERT_TRUE((*duplex)->Write(m));
    EXPECT_EQ((*duplex)->Read().value_or(""), "re:" + m);
  }
  // Cancel mid-stream: the RST_STREAM reaches the upstream, whose handler ends.
  (*duplex)->Cancel();
  EXPECT_EQ((*duplex)->Finish().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(Eventually([&] { return a.duplex_ended.load() == 1; }));
  EXPECT_TRUE(Eventually([&] { return relay->active_calls() == 0; }));
}

TEST(FrameRelay, ContentionRulesPoolExhaustedWithoutDeadlineDeadlineExceededWithOne) {
  Upstream a("a");
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = Pool({a.address()}, /*cap=*/1)}});
  Client client(relay->address());
  auto busy = std::async(std::launch::async, [&] { return client.Call("Slow", "hold"); });
  ASSERT_TRUE(Eventually([&] { return a.in_slow.load() == 1; }));
  auto exhausted = client.Call("Echo", "x");
  EXPECT_EQ(exhausted.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core::ErrorCode(exhausted.status()).value_or(""), "peer-pool-exhausted");
  auto waited = client.Call("Echo", "x", 100ms);
  EXPECT_EQ(waited.status().code(), absl::StatusCode::kDeadlineExceeded) << waited.status();
  EXPECT_EQ(relay->acquire_handoffs(), 1u);  // the refused pick waits off the loop
  EXPECT_TRUE(busy.get().ok());
  // With a deadline long enough, the waiter gets the peer once it is released.
  auto busy2 = std::async(std::launch::async, [&] { return client.Call("Slow", "hold"); });
  ASSERT_TRUE(Eventually([&] { return a.in_slow.load() == 1; }));
  auto later = client.Call("Echo", "after", 5s);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_EQ(later->body, "after");
  EXPECT_EQ(relay->acquire_handoffs(), 2u);
  EXPECT_TRUE(busy2.get().ok());
}

TEST(FrameRelay, UnreachablePeerIsUnavailableAndOpensTheBreaker) {
  int dead_port = 0;
  {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    dead_port = ntohs(addr.sin_port);
    ::close(fd);
  }
  auto pool = Pool({"127.0.0.1:" + std::to_string(dead_port)}, 0, /*breaker_failures=*/1);
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = pool}});
  Client client(relay->address());
  auto reply = client.Call("Echo", "x");
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable) << reply.status();
  EXPECT_TRUE(Eventually([&] { return !pool->HasAvailablePeers(); }));
  // The breaker is open now: the next call is refused by the peer kit.
  auto refused = client.Call("Echo", "x");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
}

TEST(FrameRelay, ProceduresTheNodeServesGoToTheFallbackAndUnknownIsUnimplemented) {
  Upstream backend("backend");
  // The "node": it serves test.Svc/Echo itself (via its grpc++ inbound, the
  // fallback) and routes the rest of test.Svc/ to the backend.
  Upstream local("local");
  auto d = std::make_shared<dispatcher::Dispatcher>("node");
  Procedure echo = Make("test.Svc", "Echo");
  echo.unary = [](dispatcher::Request r, dispatcher::UnaryCallback done) {
    done(dispatcher::Response{.headers = {}, .body = "local:" + r.body});
  };
  ASSERT_TRUE(d->Register(echo).ok());
  auto outbound = std::make_shared<transport::GrpcOutbound>(
      transport::GrpcOutboundOptions{.name = "backend", .endpoints = {backend.address()}},
      Pool({backend.address()}), core::SystemClock::Shared());
  ASSERT_TRUE(d->AddOutbound("backend", outbound).ok());
  ASSERT_TRUE(d->AddRoute({"test.Svc/", "backend", ProcedureKind::kUnary}).ok());
  ASSERT_TRUE(d->Start().ok());
  transport::GrpcInbound inbound({.address = "127.0.0.1:0", .threads = 1}, d);
  ASSERT_TRUE(inbound.Start().ok());
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = Pool({backend.address()})}},
                          inbound.address(), d);
  Client client(relay->address());
  auto served = client.Call("Echo", "x");
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->body, "local:x");
  auto routed = client.Call("Fail", "x");
  EXPECT_EQ(routed.status().code(), absl::StatusCode::kDataLoss);
  dispatcher::Request request;
  request.meta.service = "other.Svc";
  request.meta.procedure = "Nope";
  std::promise<absl::Status> p;
  client.outbound->CallUnary(
      std::move(request), [&](absl::StatusOr<dispatcher::Response> r) { p.set_value(r.status()); });
  EXPECT_EQ(p.get_future().get().code(), absl::StatusCode::kUnimplemented);
  // Drain: frame-routed calls are refused like the grpc++ inbound refuses them.
  d->Drain();
  auto drained = client.Call("Fail", "x");
  EXPECT_EQ(drained.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(core::ErrorCode(drained.status()).value_or(""), "draining");
  relay->Shutdown(1s);
  inbound.Shutdown(0ms);
  outbound->Stop();
}

TEST(FrameRelay, ConcurrentCallsOnSeveralLoops) {
  Upstream a("a"), b("b");
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = Pool({a.address(), b.address()})}});
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Client client(relay->address());
      for (int i = 0; i < 50; ++i) {
        auto body = std::to_string(t) + ":" + std::to_string(i);
        auto reply = client.Call("Echo", body, i % 2 ? std::optional(5s) : std::nullopt);
        if (reply.ok() && reply->body == body) ok.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 200);
  EXPECT_TRUE(Eventually([&] { return relay->active_calls() == 0; }));
}

// --- malformed input

std::string ClientBytes(std::function<void(nghttp2_session*)> submit) {
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session* session = nullptr;
  nghttp2_session_client_new(&session, callbacks, nullptr);
  nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, nullptr, 0);
  submit(session);
  std::string out;
  const uint8_t* data = nullptr;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(session, &data)) > 0) {
    out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  }
  nghttp2_session_del(session);
  nghttp2_session_callbacks_del(callbacks);
  return out;
}

void SubmitGet(nghttp2_session* session, bool end_stream, const std::string& extra_value = "") {
  std::vector<std::pair<std::string, std::string>> h = {{":method", "POST"},
                                                        {":scheme", "http"},
                                                        {":path", "/test.Svc/Echo"},
                                                        {":authority", "x"},
                                                        {"content-type", "application/grpc"}};
  if (!extra_value.empty()) h.emplace_back("x-big", extra_value);
  std::vector<nghttp2_nv> nv;
  for (auto& [k, v] : h) {
    nv.push_back({reinterpret_cast<uint8_t*>(k.data()), reinterpret_cast<uint8_t*>(v.data()),
                  k.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
  }
  nghttp2_data_provider provider{};
  provider.read_callback = [](nghttp2_session*, int32_t, uint8_t*, size_t, uint32_t* flags,
                              nghttp2_data_source*, void*) -> ssize_t {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
  };
  nghttp2_submit_request(session, nullptr, nv.data(), nv.size(), end_stream ? nullptr : &provider,
                         nullptr);
}

TEST(FrameRelay, MalformedInputGetsTheProtocolErrorNotACrash) {
  // A well-formed request: no error (answered UNIMPLEMENTED: no routes).
  EXPECT_TRUE(FeedInboundForTesting(
                  reinterpret_cast<const uint8_t*>(
                      ClientBytes([](nghttp2_session* s) { SubmitGet(s, false); }).data()),
                  ClientBytes([](nghttp2_session* s) { SubmitGet(s, false); }).size())
                  .ok());
  // Bad preface.
  const std::string garbage = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_FALSE(
      FeedInboundForTesting(reinterpret_cast<const uint8_t*>(garbage.data()), garbage.size()).ok());
  // DATA after END_STREAM on stream 1: a connection error (STREAM_CLOSED).
  std::string bytes = ClientBytes([](nghttp2_session* s) { SubmitGet(s, true); });
  bytes += std::string("\x00\x00\x01\x00\x00\x00\x00\x00\x01x", 10);
  EXPECT_FALSE(
      FeedInboundForTesting(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()).ok());
  // An invalid frame: SETTINGS with a length that is not a multiple of 6.
  std::string bad = ClientBytes([](nghttp2_session*) {});
  bad += std::string("\x00\x00\x05\x04\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05", 14);
  EXPECT_FALSE(
      FeedInboundForTesting(reinterpret_cast<const uint8_t*>(bad.data()), bad.size()).ok());
}

TEST(FrameRelay, OversizedHeadersResetTheStreamAndTheRelayKeepsServing) {
  Upstream a("a");
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = Pool({a.address()})}}, "", nullptr,
                          /*max_header_bytes=*/2048);
  Client client(relay->address());
  core::Headers big;
  big.Add("x-custom", std::string(8000, 'h'));
  auto reply = client.Call("Echo", "x", std::nullopt, big);
  EXPECT_FALSE(reply.ok());
  auto fine = client.Call("Echo", "x");
  ASSERT_TRUE(fine.ok()) << fine.status();
  // A raw socket speaking garbage is closed by the relay.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(relay->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string garbage = "this is not HTTP/2 at all, not even close\r\n\r\n";
  ASSERT_EQ(::write(fd, garbage.data(), garbage.size()), static_cast<ssize_t>(garbage.size()));
  timeval tv{.tv_sec = 5, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) {
  }
  EXPECT_EQ(n, 0);  // orderly close, not a timeout
  ::close(fd);
  EXPECT_TRUE(client.Call("Echo", "still").ok());
}

// --- flow control under load (the 4 KiB / c=256 stall hunt, docs/dataplane.md)
//
// A raw nghttp2 client that is a slow, stingy reader: 16 KiB initial stream
// windows, the default 64 KiB connection window, no automatic WINDOW_UPDATE,
// and received bytes are given back only every third loop turn. Through one
// connection it runs 128 concurrent unary echoes of 4-64 KiB (384 calls) and
// two of 2.5 MiB: more than the relay's 1 MiB stream and 16 MiB connection
// windows in both directions, and 64 KiB + 5 byte messages exceed the grpc++
// upstream's 64 KiB stream window. Every byte therefore waits on a
// WINDOW_UPDATE somewhere: from this client (relay -> client DATA deferred and
// resumed), from the relay (its consume-after-forward windows on both
// sessions) and from the upstream. A WINDOW_UPDATE not sent, not forwarded or
// a DATA source never resumed leaves calls hanging, which the progress
// watchdog turns into a failure naming what is stuck.
struct SlowReader {
  struct RawCall {
    std::string request;  // gRPC-framed body
    size_t sent = 0;
    std::string response;
    int grpc_status = -1;
    uint32_t reset = 0;
    bool closed = false;
  };
  nghttp2_session* session = nullptr;
  int fd = -1;
  std::vector<std::unique_ptr<RawCall>> calls;
  std::vector<std::pair<int32_t, size_t>> unconsumed;
  size_t received = 0;

  explicit SlowReader(int port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;  // as every gRPC client: no Nagle delay on WINDOW_UPDATEs
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        cb,
        [](nghttp2_session* s, uint8_t, int32_t sid, const uint8_t* data, size_t len,
           void* self) -> int {
          auto* me = static_cast<SlowReader*>(self);
          if (auto* call = static_cast<RawCall*>(nghttp2_session_get_stream_user_data(s, sid))) {
            call->response.append(reinterpret_cast<const char*>(data), len);
          }
          me->unconsumed.emplace_back(sid, len);
          me->received += len;
          return 0;
        });
    nghttp2_session_callbacks_set_on_header_callback(
        cb,
        [](nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
           const uint8_t* value, size_t valuelen, uint8_t, void*) -> int {
          auto* call =
              static_cast<RawCall*>(nghttp2_session_get_stream_user_data(s, frame->hd.stream_id));
          if (call != nullptr &&
              std::string_view(reinterpret_cast<const char*>(name), namelen) == "grpc-status") {
            call->grpc_status =
                std::stoi(std::string(reinterpret_cast<const char*>(value), valuelen));
          }
          return 0;
        });
    nghttp2_session_callbacks_set_on_stream_close_callback(
        cb, [](nghttp2_session* s, int32_t sid, uint32_t error, void*) -> int {
          if (auto* call = static_cast<RawCall*>(nghttp2_session_get_stream_user_data(s, sid))) {
            call->closed = true;
            call->reset = error;
          }
          return 0;
        });
    nghttp2_option* option = nullptr;
    nghttp2_option_new(&option);
    nghttp2_option_set_no_auto_window_update(option, 1);
    nghttp2_session_client_new2(&session, cb, this, option);
    nghttp2_option_del(option);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                         {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 16 * 1024}};
    nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  }
  ~SlowReader() {
    nghttp2_session_del(session);
    ::close(fd);
  }

  void Submit(size_t body_bytes, char fill) {
    auto call = std::make_unique<RawCall>();
    call->request.push_back('\0');
    for (int shift = 24; shift >= 0; shift -= 8) {
      call->request.push_back(static_cast<char>((body_bytes >> shift) & 0xff));
    }
    call->request.append(body_bytes, fill);
    auto nv = [](const char* k, const char* v) {
      return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(k)),
                        reinterpret_cast<uint8_t*>(const_cast<char*>(v)), std::strlen(k),
                        std::strlen(v), NGHTTP2_NV_FLAG_NONE};
    };
    nghttp2_nv headers[] = {nv(":method", "POST"),
                            nv(":scheme", "http"),
                            nv(":path", "/test.Svc/Echo"),
                            nv(":authority", "relay"),
                            nv("content-type", "application/grpc"),
                            nv("te", "trailers")};
    nghttp2_data_provider provider{};
    provider.source.ptr = call.get();
    provider.read_callback = [](nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                                uint32_t* flags, nghttp2_data_source* source, void*) -> ssize_t {
      auto* c = static_cast<RawCall*>(source->ptr);
      const size_t n = std::min(length, c->request.size() - c->sent);
      std::memcpy(buf, c->request.data() + c->sent, n);
      c->sent += n;
      if (c->sent == c->request.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    };
    ASSERT_GT(nghttp2_submit_request(session, nullptr, headers, std::size(headers), &provider,
                                     call.get()),
              0);
    calls.push_back(std::move(call));
  }

  size_t Open() const {
    size_t n = 0;
    for (const auto& c : calls) n += c->closed ? 0 : 1;
    return n;
  }

  // One loop turn: give back what was read (every third turn only), write,
  // wait up to 2 ms for bytes, read. False when the connection failed.
  bool Turn(int turn) {
    if (turn % 3 == 0) {
      for (auto [sid, len] : unconsumed) {
        if (nghttp2_session_consume(session, sid, len) != 0) {
          nghttp2_session_consume_connection(session, len);
        }
      }
      unconsumed.clear();
    }
    for (;;) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(session, &data);
      if (n < 0) return false;
      if (n == 0) break;
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::send(fd, data + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
        if (w > 0) {
          off += w;
        } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
          pollfd p{fd, POLLOUT, 0};
          ::poll(&p, 1, 10);
        } else {
          return false;
        }
      }
    }
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, 2);
    uint8_t buf[16384];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n > 0) {
        if (nghttp2_session_mem_recv(session, buf, static_cast<size_t>(n)) < 0) return false;
        continue;
      }
      if (n == 0) return false;
      return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    }
  }
};

TEST(FrameRelay, SlowReaderWithSmallWindowsGetsEveryCallThroughWithoutStalling) {
  Upstream a("a");
  auto relay = StartRelay({{.prefix = "test.Svc/", .pool = Pool({a.address()})}});
  SlowReader client(relay->port());
  constexpr int kCalls = 384, kConcurrency = 128;
  const size_t kSizes[] = {4096, 16 * 1024, 40 * 1024, 64 * 1024};
  int submitted = 0;
  client.Submit(2560 * 1024, 'L');  // past the relay's 1 MiB stream window both ways
  auto open_calls = [&] { return client.Open(); };
  const auto start = std::chrono::steady_clock::now();
  auto last_progress = start;
  size_t last_received = 0, last_open = 0;
  bool second_large = false;
  for (int turn = 0;; ++turn) {
    while (submitted < kCalls && open_calls() < kConcurrency) {
      client.Submit(kSizes[submitted % 4], static_cast<char>('a' + submitted % 26));
      ++submitted;
    }
    if (!second_large && submitted >= kCalls / 2) {
      client.Submit(2560 * 1024, 'M');
      second_large = true;
    }
    ASSERT_TRUE(client.Turn(turn)) << "the connection to the relay failed (window accounting?)";
    if (submitted == kCalls && open_calls() == 0) break;
    const auto now = std::chrono::steady_clock::now();
    if (client.received != last_received || open_calls() != last_open) {
      last_received = client.received;
      last_open = open_calls();
      last_progress = now;
    }
    // Normally done in 1-3 s; a flow-control stall makes no progress at all.
    ASSERT_LT(now - last_progress, 20s)
        << "no progress for 20 s with " << open_calls() << " calls open, " << submitted
        << " submitted, " << client.received << " bytes received; the client's connection "
        << "window towards the relay is " << nghttp2_session_get_remote_window_size(client.session);
    ASSERT_LT(now - start, 120s);
  }
  ASSERT_EQ(client.calls.size(), static_cast<size_t>(kCalls + 2));
  size_t bytes = 0;
  for (const auto& call : client.calls) {
    EXPECT_EQ(call->reset, 0u);
    EXPECT_EQ(call->grpc_status, 0);
    EXPECT_EQ(call->response, call->request);  // echoed byte for byte, one message
    bytes += call->response.size();
  }
  EXPECT_GT(bytes, size_t{16} * 1024 * 1024);  // more than the relay's connection window
  EXPECT_TRUE(Eventually([&] { return relay->active_calls() == 0; }));
}

}  // namespace
}  // namespace omnirelay::h2relay
