#include "omnirelay/http/http_server.h"

#include <gtest/gtest.h>

namespace omnirelay::http {
namespace {

TEST(HttpServerTest, RoutesExactPrefixAndFallback) {
  HttpServer server({.host = "127.0.0.1", .port = 0, .threads = 2});
  server.Route("GET", "/healthz", [](const HttpRequest&) { return HttpResponse::Text(200, "ok"); });
  server.Route("", "/items/", [](const HttpRequest& request) {
    return HttpResponse::Text(200, "item:" + request.path.substr(7) + ":" +
                                       request.QueryParam("q").value_or("-"));
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
  server.Route("GET", "/boom", [](const HttpRequest&) -> HttpResponse {
    throw std::runtime_error("boom");
  });
  ASSERT_TRUE(server.Start().ok());
  auto reply = HttpCall("127.0.0.1", server.port(), "GET", "/boom");
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->status, 500);
}

}  // namespace
}  // namespace omnirelay::http
