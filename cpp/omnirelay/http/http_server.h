#pragma once
// A small asynchronous HTTP/1.1 server on Boost.Beast + Asio (C++20 coroutines).
//
// Used by the admin/diagnostics endpoints (/healthz, /readyz, /metrics,
// /omnirelay/introspect, ...) and as the base of the HTTP inbound.
//
// Model: `threads` Asio worker threads run one io_context; every connection
// is a coroutine that reads a request, calls the matching handler on that
// worker thread, writes the reply and loops (keep-alive). Handlers therefore
// must not block for long; they are called concurrently from several threads.
//
// Routing is exact-path first, then the longest registered prefix ending in
// '/', then the fallback handler (404 by default). Register routes before
// Start(); the route table is immutable afterwards (no locking on lookup).
//
// Stop() closes the listener, lets in-flight requests finish their reply
// (bounded by `drain_timeout`), then joins the workers. Thread-safe.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"
#include "omnirelay/tls/identity.h"

namespace omnirelay::tls {
class ContextSource;
}

namespace omnirelay::http {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // raw target incl. query
  std::string path;    // target without the query
  std::string query;   // after '?', undecoded
  core::Headers headers;
  std::string body;
  std::string remote_address;
  bool secure = false;     // arrived over TLS
  tls::PeerIdentity peer;  // the verified client certificate (mTLS), else empty

  // Value of `name` in the query string (decoded), if present.
  std::optional<std::string> QueryParam(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  core::Headers headers;
  std::string body;
  // Streaming reply (Server-Sent Events and other long responses): when set,
  // `body` is ignored, the headers go out with chunked transfer encoding and
  // `stream` runs on the worker thread with a writer that sends one chunk per
  // call, blocking, and returns false once the client is gone. It occupies
  // its worker thread for the whole stream (size `threads` accordingly).
  std::function<void(const std::function<bool(std::string_view)>& write)> stream;

  static HttpResponse Text(int status, std::string body);
  static HttpResponse Json(int status, std::string body);
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

// What the server accepts from a client before a handler sees the request.
// Violations get a precise answer and the connection is closed afterwards:
// unparseable request 400, body over `max_body_bytes` 413, request line plus
// headers over `max_header_bytes` 431. A client that does not finish its
// headers within `header_timeout` (counted from when the server starts
// waiting for a request, so idle keep-alive connections are included) or its
// body within `body_timeout` is disconnected (slowloris).
struct HttpLimits {
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 16 * 1024 * 1024;
  std::chrono::milliseconds header_timeout{10000};
  std::chrono::milliseconds body_timeout{30000};
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0 = pick a free port (see HttpServer::port())
  int threads = 1;
  std::chrono::milliseconds drain_timeout{5000};
  size_t max_body_bytes =
      16 * 1024 * 1024;  // kept for callers; limits.max_body_bytes wins if lower
  HttpLimits limits{};
  // TLS (tls::Role::kServer): every connection handshakes first with the
  // source's current context (rotated files apply to new connections).
  std::shared_ptr<tls::ContextSource> tls{};
};

// The outcome of parsing one request from raw bytes with the server's own
// parser, limits and error mapping (used by the server, the fuzz target and
// tests). `error_status` is 0 on success, else the HTTP status the server
// answers with (400, 413, 431); `complete` is false when more bytes are needed.
struct ParsedRequest {
  bool complete = false;
  int error_status = 0;
  std::string error;
  HttpRequest request;
};
ParsedRequest ParseHttpRequest(std::string_view bytes, const HttpLimits& limits);

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // `method` empty matches any method. A path ending in '/' is a prefix route.
  void Route(std::string method, std::string path, HttpHandler handler);
  void Fallback(HttpHandler handler);

  // Binds and starts serving. Fails with Unavailable if the address is taken.
  absl::Status Start();
  void Stop();

  // The bound port (useful with port 0). Valid after Start().
  uint16_t port() const { return bound_port_.load(); }
  std::string address() const;  // "host:port"
  bool running() const { return running_.load(); }
  int64_t active_requests() const { return active_requests_.load(); }

 private:
  struct Impl;
  HttpResponse Dispatch(const HttpRequest& request) const;

  HttpServerOptions options_;
  std::map<std::pair<std::string, std::string>, HttpHandler> exact_;
  std::vector<std::pair<std::pair<std::string, std::string>, HttpHandler>> prefixes_;
  HttpHandler fallback_;
  std::unique_ptr<Impl> impl_;
  std::vector<std::thread> workers_;
  std::atomic<uint16_t> bound_port_{0};
  std::atomic<bool> running_{false};
  std::atomic<int64_t> active_requests_{0};
};

// Minimal blocking HTTP/1.1 client (one request per connection) for tests,
// health probes and the CLI's admin verbs. Not for the data plane.
struct HttpClientResult {
  int status = 0;
  core::Headers headers;
  std::string body;
};
absl::StatusOr<HttpClientResult> HttpCall(
    const std::string& host, uint16_t port, const std::string& method, const std::string& target,
    const std::string& body = {}, const core::Headers& headers = {},
    std::chrono::milliseconds timeout = std::chrono::seconds(10),
    // HTTPS when set (tls::Role::kClient): the server's certificate must
    // verify and match `host`; a failed handshake is Unavailable naming why
    // ("certificate has expired", ...).
    tls::ContextSource* tls = nullptr);

}  // namespace omnirelay::http
