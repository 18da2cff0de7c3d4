#pragma once
// The one parser for endpoint addresses used everywhere (config validation,
// transports, CLI flags, the Python bindings): "[scheme://]host:port[/path]".
//
//   scheme  http, https, grpc, grpcs, or none. `https`/`grpcs` ask for TLS;
//           `tls()` says so, and whoever opens the connection must honour it
//           (use TLS or refuse: never plaintext). "dns:///" is accepted in
//           front of a gRPC target and dropped.
//   host    a name, an IPv4 address, or an IPv6 address in brackets
//           ("[::1]:80"; `host` keeps the brackets off).
//   port    decimal 0..65535, nothing else (no sign, no trailing garbage).
//   path    "/..." after the authority ("/" when absent).
//
// Errors are InvalidArgument naming the address and what is wrong with it.
// Thread-safety: pure functions.
#include <cstdint>
#include <string>
#include <string_view>

#include "omnirelay/core/status.h"

namespace omnirelay::core {

struct HostPort {
  std::string scheme;  // lower-cased, "" when none was given
  std::string host;
  uint16_t port = 0;
  std::string path = "/";

  bool tls() const { return scheme == "https" || scheme == "grpcs"; }
  // "host:port" ("[v6]:port" for IPv6), the form listeners and gRPC targets take.
  std::string Authority() const;
};

absl::StatusOr<HostPort> ParseHostPort(std::string_view address);

// Convenience for validators: the same checks, as a bool.
inline bool IsHostPort(std::string_view address) { return ParseHostPort(address).ok(); }

}  // namespace omnirelay::core
