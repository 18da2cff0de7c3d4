#pragma once
// gRPC inbound and outbound on grpc++ (Debian's 1.51), byte level.
//
// Inbound: an AsyncGenericService on `threads` server completion queues, one
// polling thread each. Any "/service/method" is accepted; the dispatcher
// resolves it (procedure, alias or forwarding route) or the call ends in
// UNIMPLEMENTED. Unary and oneway calls run as a completion-queue state
// machine without a thread per call; streaming kinds run their blocking
// handler on a bounded pool (`max_streams` threads, started on demand, joined
// by Shutdown) and wait for each queue operation there.
//
// Outbound: peers from a PeerPool (static or changing at runtime), one
// channel per peer, made by the pool's attachment factory on add. Unary calls use
// the async generic stub on the *calling thread's* completion queue when the
// caller is an inbound queue thread (a relayed call then lives on one thread
// from request to reply, no hand-off), else on the outbound's own queue.
// Deadline = RequestMeta::EffectiveDeadline (earlier of deadline and TTL),
// set on the peer call, so the peer sees it as its gRPC deadline.
// Status codes cross unchanged (absl codes are gRPC codes); an attached
// error code travels as trailing metadata `rpc-error-code`.
//
// Metadata mapping: every client metadata entry except the transport's own
// (grpc-*, :*, content-type, te, user-agent) is copied into
// RequestMeta::headers and forwarded by outbounds, so unknown headers
// (traceparent, x-client-principal, ...) cross relays. rpc-caller,
// rpc-encoding, rpc-shard-key, rpc-routing-key, rpc-routing-delegate fill
// the RequestMeta fields as well.
//
// The forwarding path is this generic grpc++ relay; it sits behind the
// dispatcher::Outbound / route interface so a leaner HTTP/2 frame relay
// (nghttp2) can replace it without touching routing or middleware.
//
// Thread-safety: Start/Shutdown from one thread; everything else concurrent.
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/dispatcher/dispatcher.h"
#include "omnirelay/tls/tls.h"
#include "omnirelay/transport/peer_pool.h"

namespace grpc {
class Server;
class ServerCompletionQueue;
class CompletionQueue;
class AsyncGenericService;
class Service;
class Channel;
}  // namespace grpc

namespace omnirelay::transport {

struct GrpcInboundOptions {
  std::string address = "127.0.0.1:0";
  int threads = 2;  // completion queues, one polling thread each
  int max_message_bytes = 16 * 1024 * 1024;
  // Typed services served on the same listener before the generic dispatcher
  // service (e.g. the mesh's Gossip service); not owned, must outlive the inbound.
  std::vector<grpc::Service*> services = {};
  // TLS listener (client_auth require = mTLS); plaintext when unset.
  std::optional<tls::TlsOptions> tls{};
  // Streaming calls handled at once (each holds one pool thread while it
  // runs); further streams are answered RESOURCE_EXHAUSTED ("stream-capacity").
  int max_streams = 64;
};

class GrpcInbound {
 public:
  GrpcInbound(GrpcInboundOptions options, std::shared_ptr<dispatcher::Dispatcher> dispatcher);
  ~GrpcInbound();
  GrpcInbound(const GrpcInbound&) = delete;
  GrpcInbound& operator=(const GrpcInbound&) = delete;

  absl::Status Start();
  // Stops accepting, cancels what is left after `grace`, joins the threads.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(2000));
  int port() const { return port_; }
  std::string address() const;

 private:
  void Poll(int index);
  GrpcInboundOptions options_;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::unique_ptr<grpc::AsyncGenericService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs_;
  std::vector<std::thread> threads_;
  int port_ = 0;
  bool shut_down_ = false;
};

struct GrpcOutboundOptions {
  std::string name;
  std::string service;    // remote service; overrides the request's when set
  std::string procedure;  // fixed remote procedure ("Svc/Method" or "Method"); optional
  std::vector<std::string> endpoints;  // "host:port", "http://host:port" or "https://..."
  PeerPoolOptions peers;
  int threads = 1;  // own completion-queue threads for callers off the inbound threads
  // "https://" endpoints use TLS with these options (ca_file to verify the
  // server, cert/key as the client identity for mTLS); the system store and
  // no client certificate when unset. Other endpoints are plaintext.
  std::optional<tls::TlsOptions> tls{};
};

class GrpcOutbound final : public dispatcher::Outbound {
 public:
  GrpcOutbound(GrpcOutboundOptions options, std::shared_ptr<PeerPool> pool,
               std::shared_ptr<core::Clock> clock);
  ~GrpcOutbound() override;

  std::string_view transport() const override { return "grpc"; }
  absl::Status Start() override;
  void Stop() override;
  void CallUnary(dispatcher::Request request, dispatcher::UnaryCallback done) override;
  absl::StatusOr<std::unique_ptr<dispatcher::OutboundStream>> OpenStream(
      const core::RequestMeta& meta) override;
  bool HasAvailablePeers() const override { return pool_->HasAvailablePeers(); }
  nlohmann::json Snapshot() const override;
  const std::shared_ptr<PeerPool>& pool() const { return pool_; }

 private:
  std::string MethodPath(const core::RequestMeta& meta) const;
  grpc::CompletionQueue* PickQueue();
  // The leased peer's channel (the pool's attachment); null before Start.
  static std::shared_ptr<grpc::Channel> LeasedChannel(const PeerLease& lease);
  void StartUnary(dispatcher::Request request, dispatcher::UnaryCallback done,
                  std::optional<core::TimePoint> deadline);
  void AcquireWorker();

  GrpcOutboundOptions options_;
  std::shared_ptr<PeerPool> pool_;
  std::shared_ptr<core::Clock> clock_;
  std::vector<std::unique_ptr<grpc::CompletionQueue>> cqs_;
  std::vector<std::thread> threads_;
  std::atomic<size_t> next_cq_{0};
  bool started_ = false;
  // Calls with a deadline may wait in the peer kit's Acquire (coordinator
  // rule 5: every peer busy -> wait until a release or the deadline). That
  // wait must not park a completion-queue thread (the release it waits for
  // may need that thread), so such calls acquire on these workers; calls
  // without a deadline never wait and stay inline on the fast path.
  std::mutex acquire_mu_;
  std::condition_variable acquire_cv_;
  std::deque<std::function<void()>> acquire_queue_;
  std::vector<std::thread> acquire_workers_;
  bool acquire_stopping_ = false;
};

// "http://host:port" / "https://host:port/" / "host:port" -> "host:port".
std::string GrpcTarget(const std::string& endpoint);
// True for "https://..." endpoints (TLS); everything else is plaintext.
bool IsTlsEndpoint(const std::string& endpoint);

// The status a forwarded call reports when the backend ended it with
// CANCELLED although the caller (this side) did not cancel it: that is
// grpc::Server::Shutdown cancelling the calls a draining backend still held,
// i.e. the backend going away, so UNAVAILABLE (retryable, a peer failure)
// with the message kept, as the gateway treats it. A CANCELLED the caller
// asked for, and every other status, pass through unchanged.
absl::Status UnrequestedCancelIsUnavailable(absl::Status status, bool cancelled_by_caller);

}  // namespace omnirelay::transport
