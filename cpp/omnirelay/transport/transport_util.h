#pragma once
// Header conventions shared by the gRPC and HTTP transports.
// Thread-safety: pure functions.
#include <string_view>

#include "omnirelay/core/request_meta.h"

namespace omnirelay::transport {

// Headers owned by a transport hop (HTTP/2 pseudo headers, grpc-*, HTTP/1.1
// connection headers, x-omnirelay-internal-*); never copied to the next hop.
bool IsTransportHeader(std::string_view name);
// rpc-* headers that RequestMeta carries as fields (re-emitted from them).
bool IsRpcHeader(std::string_view name);
// Fills meta.caller, encoding, shard/routing keys, TTL (rpc-ttl-ms) and
// deadline (rpc-deadline) from meta.headers.
void ApplyRpcHeaders(core::RequestMeta& meta);

}  // namespace omnirelay::transport
