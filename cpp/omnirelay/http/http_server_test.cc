#include "omnirelay/http/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

namespace omnirelay::http {
namespace {

// Sends `bytes` on a fresh connection (optionally holding the connection open
// without sending more), then reads until the server closes it or `wait`
// passes. Returns what the server sent and whether it closed the connection.
struct RawReply {
  std::string text;
  bool closed = false;
};
RawReply RawExchange(uint16_t port, const std::string& bytes,
                     std::chrono::milliseconds wait = std::chrono::seconds(10)) {
  RawReply reply;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return reply;
  }
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may refuse and close before reading it all
    sent += static_cast<size_t>(n);
  }
  timeval tv{.tv_sec = 0, .tv_usec = 100 * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const auto give_up = std::chrono::steady_clock::now() + wait;
  char buf[4096];
  while (std::chrono::steady_clock::now() < give_up) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      reply.closed = true;
      break;
    }
    if (n > 0) reply.text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return reply;
}

HttpServerOptions SmallLimits() {
  HttpServerOptions options{.host = "127.0.0.1", .port = 0, .threads = 2};
  options.limits = {.max_header_bytes = 1024,
                    .max_body_bytes = 64,
                    .header_timeout = std::chrono::milliseconds(300),
                    .body_timeout = std::chrono::milliseconds(300)};
  return options;
}

class HttpLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.Route("", "/echo",
                  [](const HttpRequest& r) { return HttpResponse::Text(200, r.body); });
    ASSERT_TRUE(server_.Start().ok());
  }
  HttpServer server_{SmallLimits()};
};

TEST_F(HttpLimitsTest, WellFormedRequestWithinLimitsIsServed) {
  auto reply = RawExchange(server_.port(),
                           "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                           "Connection: close\r\n\r\nhello");
  EXPECT_TRUE(reply.text.starts_with("HTTP/1.1 200")) << reply.text;
  EXPECT_TRUE(reply.text.ends_with("hello")) << reply.text;
}

TEST_F(HttpLimitsTest, MalformedRequestLineIs400) {
  auto reply = RawExchange(server_.port(), "THIS IS NOT HTTP\r\n\r\n");
  EXPECT_TRUE(reply.text.starts_with("HTTP/1.1 400")) << reply.text;
  EXPECT_TRUE(reply.closed);
}

TEST_F(HttpLimitsTest, MalformedHeaderIs400) {
  auto reply = RawExchange(server_.port(), "GET /echo HTTP/1.1\r\nBad Header Name: x\r\n\r\n");
  EXPECT_TRUE(reply.text.starts_with("HTTP/1.1 400")) << reply.text;
}

TEST_F(HttpLimitsTest, DeclaredBodyOverLimitIs413) {
  auto reply = RawExchange(server_.port(),
                           "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
  EXPECT_TRUE(reply.text.starts_with("HTTP/1.1 413")) << reply.text;
  EXPECT_TRUE(reply.closed);
}

TEST_F(HttpLimitsTest, ChunkedBodyOverLimitIs413) {
  const std::string chunk(100, 'x');
  auto reply = RawExchange(server_.port(),
                           "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "64\r\n" +
                               chunk + "\r\n0\r\n\r\n");
  EXPECT_TRUE(reply.text.starts_with("HTTP/1.1 413")) << reply.text;
}

TEST_F(HttpLimitsTest, OversizedHeadersAre431) {
  auto reply =
      RawExchange(server_.port(),
                  "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n");
  EXPECT_TRUE(reply.text.starts_with("HTTP/1.1 431")) << reply.text;
  EXPECT_TRUE(reply.closed);
}

TEST_F(HttpLimitsTest, SlowHeadersAreDisconnected) {
  const auto start = std::chrono::steady_clock::now();
  // Never finishes the header block: the server must hang up on its own.
  auto reply = RawExchange(server_.port(), "GET /echo HTTP/1.1\r\nHost: x\r\n");
  EXPECT_TRUE(reply.closed);
  EXPECT_TRUE(reply.text.empty()) << reply.text;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(8));
}

TEST_F(HttpLimitsTest, SlowBodyIsDisconnected) {
  auto reply = RawExchange(server_.port(),
                           "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
  EXPECT_TRUE(reply.closed);
  EXPECT_TRUE(reply.text.empty()) << reply.text;
}

TEST(ParseHttpRequestTest, MapsParserOutcomes) {
  HttpLimits limits{.max_header_bytes = 256, .max_body_bytes = 8};
  auto ok = ParseHttpRequest(
      "POST /a/b?x=1 HTTP/1.1\r\nRpc-Ttl-Ms: 5\r\nContent-Length: 2\r\n\r\nhi", limits);
  ASSERT_TRUE(ok.complete) << ok.error;
  EXPECT_EQ(ok.request.path, "/a/b");
  EXPECT_EQ(ok.request.query, "x=1");
  EXPECT_EQ(ok.request.body, "hi");
  EXPECT_EQ(ok.request.headers.Get("rpc-ttl-ms"), "5");
  EXPECT_FALSE(ParseHttpRequest("GET / HTTP/1.1\r\n", limits).complete);
  EXPECT_EQ(ParseHttpRequest("GET / HTTP/1.1\r\n", limits).error_status, 0);
  EXPECT_EQ(ParseHttpRequest("\x01\x02\r\n\r\n", limits).error_status, 400);
  EXPECT_EQ(ParseHttpRequest("POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n", limits).error_status,
            413);
  EXPECT_EQ(ParseHttpRequest("GET / HTTP/1.1\r\nX: " + std::string(300, 'a') + "\r\n\r\n", limits)
                .error_status,
            431);
}

TEST(HttpServerTest, RoutesExactPrefixAndFallback) {
  HttpServer server({.host = "127.0.0.1", .port = 0, .threads = 2});
  server.Route("GET", "/healthz", [](const HttpRequest&) { return HttpResponse::Text(200, "ok"); });
  server.Route("", "/items/", [](const HttpRequest& request) {
    return HttpResponse::Text(
        200, "item:" + request.path.substr(7) + ":" + request.QueryParam("q").value_or("-"));
  });
  server.Route("POST", "/echo", [](const HttpRequest& request) {
    HttpResponse response = HttpResponse::Json(201, request.body);
    response.headers.Set("X-Seen-Header", std::string(request.headers.Get("x-test").value_or("")));
    return response;
  });
  ASSERT_TRUE(server.Start().ok());
  ASSERT_GT(server.port(), 0);

  auto health = HttpCall("127.0.0.1", server.port(), "GET", "/healthz");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok");

  auto item = HttpCall("127.0.0.1", server.port(), "GET", "/items/42?q=a%20b");
  ASSERT_TRUE(item.ok());
  EXPECT_EQ(item->body, "item:42:a b");

  core::Headers headers;
  headers.Set("X-Test", "yes");
  auto echo = HttpCall("127.0.0.1", server.port(), "POST", "/echo", "{\"a\":1}", headers);
  ASSERT_TRUE(echo.ok());
  EXPECT_EQ(echo->status, 201);
  EXPECT_EQ(echo->body, "{\"a\":1}");
  EXPECT_EQ(echo->headers.Get("content-type"), "application/json");
  EXPECT_EQ(echo->headers.Get("x-seen-header"), "yes");

  auto missing = HttpCall("127.0.0.1", server.port(), "GET", "/nope");
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);

  auto wrong_method = HttpCall("127.0.0.1", server.port(), "DELETE", "/healthz");
  ASSERT_TRUE(wrong_method.ok());
  EXPECT_EQ(wrong_method->status, 404);
  server.Stop();
  EXPECT_FALSE(HttpCall("127.0.0.1", server.port(), "GET", "/healthz").ok());
}

TEST(HttpServerTest, PortInUseIsUnavailable) {
  HttpServer first({.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(first.Start().ok());
  HttpServer second({.host = "127.0.0.1", .port = first.port()});
  const absl::Status status = second.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
}

TEST(HttpServerTest, HandlerExceptionBecomes500) {
  HttpServer server({.host = "127.0.0.1", .port = 0});
  server.Route("GET", "/boom",
               [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("boom"); });
  ASSERT_TRUE(server.Start().ok());
  auto reply = HttpCall("127.0.0.1", server.port(), "GET", "/boom");
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->status, 500);
}

}  // namespace
}  // namespace omnirelay::http
