#pragma once
// Header conventions shared by the gRPC and HTTP transports.
// Thread-safety: pure functions.
#include <string_view>

#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"

namespace omnirelay::transport {

// Headers owned by a transport hop (HTTP/2 pseudo headers, grpc-*, HTTP/1.1
// connection headers, x-omnirelay-internal-*); never copied to the next hop.
bool IsTransportHeader(std::string_view name);
// rpc-* headers that RequestMeta carries as fields (re-emitted from them).
bool IsRpcHeader(std::string_view name);
// Fills meta.caller, encoding, shard/routing keys, TTL (rpc-ttl-ms) and
// deadline (rpc-deadline) from meta.headers. A malformed Rpc-Ttl-Ms (not a
// plain non-negative decimal, or above kMaxTtlMs) or Rpc-Deadline (not an
// RFC 3339 timestamp) is InvalidArgument naming the header and the value:
// the call is refused (HTTP 400 / gRPC INVALID_ARGUMENT), never run with a
// half-parsed or ignored deadline.
absl::Status ApplyRpcHeaders(core::RequestMeta& meta);

// The largest TTL accepted (ten years): keeps now + TTL far from overflow.
inline constexpr long long kMaxTtlMs = 10LL * 365 * 24 * 3600 * 1000;

}  // namespace omnirelay::transport
