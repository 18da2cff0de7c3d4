#pragma once
// FrameRelay: the HTTP/2 frame relay behind forwarding routes (the "fast
// path", docs/dataplane.md).
//
// It terminates HTTP/2 on the inbound with nghttp2 and pumps each call's
// HEADERS, DATA and trailers to a pooled upstream HTTP/2 connection of the
// peer the route's PeerPool leased, without decoding gRPC messages: it reads
// only what routing needs (`:path`, `rpc-*`, `grpc-timeout`) and copies each
// body byte once into the call's buffer on its way to the other socket's
// write buffer.
//
// Threads: `threads` event loops (epoll), each with its own SO_REUSEPORT
// listener on the same port, its own inbound connections, and its own
// upstream connection per peer. A call lives on one loop from HEADERS to
// trailers; nothing of a call is shared between threads except the lease
// hand-off below.
//
// Per call:
//   * admission: Dispatcher::BeginCall/EndCall (drain answers UNAVAILABLE
//     "draining" as the grpc++ inbound does);
//   * deadline = min(grpc-timeout, rpc-deadline, now + rpc-ttl-ms); sent
//     upstream as the remaining grpc-timeout and enforced by a loop timer
//     (DEADLINE_EXCEEDED, upstream stream reset);
//   * lease: PeerPool::Acquire. Without a deadline it never waits and runs
//     inline; with one it may wait (coordinator rule 5), so it runs on a
//     small acquire pool and the result is posted back to the loop — the
//     same split as GrpcOutbound. Released once with the call's gRPC status
//     (from the upstream trailers, or the mapped failure) and latency;
//   * cancellation: RST_STREAM from the client resets the upstream stream
//     (CANCEL) and the lease is released Cancelled; an upstream RST_STREAM
//     becomes a status (REFUSED_STREAM → UNAVAILABLE, CANCEL → CANCELLED,
//     else INTERNAL) or, once the response started, an RST_STREAM to the
//     client with the same code;
//   * flow control: automatic WINDOW_UPDATEs are off; a side's window is
//     reopened only when its bytes were handed to the other side's socket
//     buffer, so a slow reader throttles the writer end to end;
//   * upstream connection failure (connect error, EOF, protocol error) ends
//     its calls UNAVAILABLE (lease released Unavailable, feeding the breaker);
//     an upstream GOAWAY retires the connection (new calls open another),
//     streams it refused end UNAVAILABLE.
//
// Calls that do not match a frame route (procedures the node serves itself,
// routes that stay on the grpc++ path) are pumped unchanged to `fallback`
// (the node's internal grpc++ inbound on loopback) or, without one, answered
// UNIMPLEMENTED.
//
// Malformed HTTP/2 gets nghttp2's protocol error (GOAWAY, or RST_STREAM for
// a stream error) and the connection closed; header blocks over
// `max_header_bytes` reset the stream.
//
// Thread-safety: Start/Shutdown from one thread. Ownership: the relay owns
// its loops, connections and calls; routes keep their PeerPools alive.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/status.h"
#include "omnirelay/dispatcher/dispatcher.h"
#include "omnirelay/h2relay/route_hook.h"
#include "omnirelay/transport/peer_pool.h"

namespace omnirelay::h2relay {

struct FrameRoute {
  // The dispatcher route prefix this entry serves ("pkg.Svc/" ...).
  std::string prefix;
  std::string outbound;                       // outbound name (introspection)
  std::shared_ptr<transport::PeerPool> pool;  // the outbound's peer pool
  // Outbound overrides of the remote path, as GrpcOutbound applies them.
  std::string service;
  std::string procedure;
  // When set, the route's calls are decided by the hook on their HEADERS
  // (route_hook.h: admission, the upstream per attempt, replay on transport
  // failure) instead of leasing from `pool` (which may then be null).
  std::shared_ptr<RouteHook> hook;
};

struct FrameRelayOptions {
  std::string address = "127.0.0.1:0";
  int threads = 2;  // event loops
  std::vector<FrameRoute> routes;
  // "host:port" for everything that is not a frame route; empty = UNIMPLEMENTED.
  std::string fallback;
  // Decides which calls are frame-routed (Resolve: registered procedures
  // win over routes, the longest route prefix wins) and admits calls
  // (drain). Optional: without it the longest matching `routes` prefix wins.
  std::shared_ptr<dispatcher::Dispatcher> dispatcher;
  std::shared_ptr<core::Clock> clock;  // default: system clock
  uint32_t max_header_bytes = 64 * 1024;
  uint32_t max_concurrent_streams = 1024;
  int acquire_threads = 4;  // for leases that may wait (calls with a deadline)
};

class FrameRelay {
 public:
  explicit FrameRelay(FrameRelayOptions options);
  ~FrameRelay();
  FrameRelay(const FrameRelay&) = delete;
  FrameRelay& operator=(const FrameRelay&) = delete;

  absl::Status Start();
  // Stops accepting, sends GOAWAY, lets in-flight calls finish for up to
  // `grace`, then closes every connection and joins the loops.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(2000));
  int port() const { return port_; }
  std::string address() const;
  // Calls currently pumped (frame routes and fallback); for tests.
  int64_t active_calls() const;
  // Leases handed to the acquire threads (calls with a deadline whose first
  // pick was refused, so they may wait); for tests.
  uint64_t acquire_handoffs() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// The fuzz seam: feeds `bytes` to a fresh inbound server session (no socket;
// whatever the relay would write is discarded) with no routes and no
// fallback. Returns nghttp2's verdict as a status (for tests).
absl::Status FeedInboundForTesting(const uint8_t* data, size_t size);

}  // namespace omnirelay::h2relay
