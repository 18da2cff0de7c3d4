#pragma once
// RouteHook: lets a subsystem decide a frame route's calls on their inbound
// HEADERS alone, while the frame relay pumps the bodies as frames (issue 15,
// item 4: the session gateway on the frame relay).
//
// A FrameRoute with a `hook` does not lease from a PeerPool. Instead, per call:
//   1. OnHeaders(path, headers) runs on the loop thread once the request
//      HEADERS are complete. It answers with an error status (sent to the
//      client as trailers-only, nothing forwarded), with nullptr (the call is
//      pumped unchanged to the relay's `fallback`, e.g. a grpc++ server that
//      needs to see messages), or with a CallHook that drives the call.
//   2. CallHook::Next() names the upstream for an attempt (or the status to
//      answer when none is left). The relay keeps one upstream HTTP/2
//      connection per (hook, target.key) on each loop, so `key` must name one
//      process at one address (never reused for another).
//   3. Until the first response DATA frame reaches the client, the relay
//      keeps the request bytes (up to kMaxReplayBytes) and, when the attempt
//      fails at the transport level, calls AttemptFailed and then Next()
//      again and replays the request on the new upstream. Transport level:
//      the upstream connection failed (connect error, EOF, protocol error),
//      the upstream reset the stream, the upstream answered UNAVAILABLE or
//      CANCELLED without a message (a server going away), or no response
//      HEADERS/DATA within attempt_timeout(). Every other status is the
//      application's: AttemptAnswered() and the response is pumped through.
//   4. Finished(code) once with the status the client got (metrics).
// The response HEADERS of a hooked call are held back until its first DATA
// frame (or its trailers), so an attempt that fails after sending only
// initial metadata can still be replayed, as on the gateway's grpc++ path
// where a call commits with its first response message.
//
// Threading: OnHeaders may run concurrently on every loop; a CallHook is
// used by one loop thread only and destroyed there.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "omnirelay/core/status.h"

namespace omnirelay::h2relay {

using RelayHeader = std::pair<std::string, std::string>;

// Where an attempt goes.
struct HookTarget {
  uint64_t key = 0;     // connection key: one process at one address
  std::string address;  // host:port
};

class CallHook {
 public:
  virtual ~CallHook() = default;
  // The upstream for the next attempt, or the status to answer.
  virtual absl::StatusOr<HookTarget> Next() = 0;
  // The attempt that Next() last returned failed at the transport level
  // (`timed_out`: no response within the attempt timeout).
  virtual void AttemptFailed(bool timed_out, std::string_view reason) = 0;
  // The attempt answered (any status of the application's).
  virtual void AttemptAnswered() = 0;
  // The client's final status (once; kCancelled when the client went away).
  virtual void Finished(absl::StatusCode code) = 0;
};

class RouteHook {
 public:
  // Requests larger than this are forwarded but not replayed.
  static constexpr size_t kMaxReplayBytes = 64 * 1024;

  virtual ~RouteHook() = default;
  // `headers`: the request's non-pseudo headers as received (grpc-timeout
  // excluded; the relay handles deadlines).
  virtual absl::StatusOr<std::unique_ptr<CallHook>> OnHeaders(
      std::string_view path, std::span<const RelayHeader> headers) = 0;
  virtual std::chrono::milliseconds attempt_timeout() const = 0;
};

}  // namespace omnirelay::h2relay
