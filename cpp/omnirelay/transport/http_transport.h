#pragma once
// HTTP/1.1 inbound and outbound (Boost.Beast via omnirelay::http).
//
// Inbound wire format (any path; POST):
//   request headers  Rpc-Procedure (required unless the path is
//                    "/<service>/<procedure>"), Rpc-Service (default: the
//                    node's service), Rpc-Caller, Rpc-Encoding,
//                    Rpc-Shard-Key, Rpc-Routing-Key, Rpc-Routing-Delegate,
//                    Rpc-Ttl-Ms, Rpc-Deadline (RFC 3339); other headers are
//                    kept in RequestMeta::headers (traceparent, principals).
//   unary            200 with the response body.
//   oneway           202, empty body, once the call is accepted.
//   server-stream    200 text/event-stream: one `data:` event per message,
//                    then `event: end` with {"status": "OK"} or the error.
//   errors           core::ToHttpStatus(code), headers Rpc-Status (code
//                    name), Rpc-Error-Code, Rpc-Error-Message.
//   draining         503 with retry-after.
// Every reply carries Rpc-Status.
//
// Outbound: POSTs to one of N peers (endpoints "http://host:port[/path]")
// leased from a PeerPool, on a small worker pool (blocking client); the
// reply's Rpc-Status wins over the HTTP status.
// Thread-safety: as for the gRPC transport.
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "omnirelay/core/address.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/dispatcher/dispatcher.h"
#include "omnirelay/http/http_server.h"
#include "omnirelay/tls/tls.h"
#include "omnirelay/transport/peer_pool.h"

namespace omnirelay::transport {

struct HttpInboundOptions {
  std::string address = "127.0.0.1:0";
  int threads = 4;
  // TLS listener (tls::Role::kServer); plaintext when null.
  std::shared_ptr<tls::ContextSource> tls{};
  http::HttpLimits limits{};  // 400/413/431 and read timeouts (http_server.h)
};

class HttpInbound {
 public:
  HttpInbound(HttpInboundOptions options, std::shared_ptr<dispatcher::Dispatcher> dispatcher);
  ~HttpInbound();
  // `extra` routes (admin endpoints served on the same port) are added first.
  absl::Status Start(const std::function<void(http::HttpServer&)>& extra = nullptr);
  void Stop();
  int port() const { return server_ ? server_->port() : 0; }
  std::string address() const { return server_ ? server_->address() : ""; }

 private:
  http::HttpResponse Handle(const http::HttpRequest& request);
  HttpInboundOptions options_;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::unique_ptr<http::HttpServer> server_;
};

struct HttpOutboundOptions {
  std::string name;
  std::string service;
  std::string procedure;
  std::vector<std::string> endpoints;
  PeerPoolOptions peers;
  int threads = 4;
  // "https://" endpoints use TLS with these options (ca_file verifies the
  // server, cert/key are the client identity); the system store when unset.
  std::optional<tls::TlsOptions> tls{};
};

class HttpOutbound final : public dispatcher::Outbound {
 public:
  HttpOutbound(HttpOutboundOptions options, std::shared_ptr<PeerPool> pool,
               std::shared_ptr<core::Clock> clock);
  ~HttpOutbound() override;
  std::string_view transport() const override { return "http"; }
  absl::Status Start() override;
  void Stop() override;
  void CallUnary(dispatcher::Request request, dispatcher::UnaryCallback done) override;
  bool HasAvailablePeers() const override { return pool_->HasAvailablePeers(); }
  nlohmann::json Snapshot() const override;

 private:
  void Work();
  void Run(dispatcher::Request request, dispatcher::UnaryCallback done);
  HttpOutboundOptions options_;
  std::shared_ptr<PeerPool> pool_;
  std::shared_ptr<core::Clock> clock_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> workers_;
  bool stopping_ = false;
  std::shared_ptr<tls::ContextSource> tls_;  // set when an endpoint is https://
};

// The one address parser (core/address.h), re-exported for transport callers.
using HostPort = core::HostPort;
inline absl::StatusOr<HostPort> ParseHostPort(const std::string& address) {
  return core::ParseHostPort(address);
}

}  // namespace omnirelay::transport
