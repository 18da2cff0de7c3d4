#include "omnirelay/core/address.h"

#include <algorithm>
#include <cctype>

namespace omnirelay::core {
namespace {

absl::Status Bad(std::string_view address, std::string_view why) {
  return absl::InvalidArgumentError("address '" + std::string(address) + "' " + std::string(why));
}

}  // namespace

std::string HostPort::Authority() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

absl::StatusOr<HostPort> ParseHostPort(std::string_view address) {
  HostPort out;
  std::string_view rest = address;
  if (rest.starts_with("dns:///")) rest.remove_prefix(7);
  if (const auto sep = rest.find("://"); sep != std::string_view::npos) {
    std::string scheme(rest.substr(0, sep));
    std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (scheme != "http" && scheme != "https" && scheme != "grpc" && scheme != "grpcs") {
      return Bad(address, "has unknown scheme '" + scheme + "' (http, https, grpc, grpcs)");
    }
    out.scheme = scheme;
    rest.remove_prefix(sep + 3);
  }
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
    out.path = std::string(rest.substr(slash));
    rest = rest.substr(0, slash);
  }
  std::string_view host;
  std::string_view port;
  if (rest.starts_with("[")) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      return Bad(address, "is not [ipv6]:port");
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) return Bad(address, "is not host:port");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return Bad(address, "has an IPv6 host without brackets ([::1]:port)");
    }
  }
  if (host.empty()) return Bad(address, "has no host");
  // Names and IPv4: letters, digits, '-', '.', '_'; bracketed IPv6 adds ':'
  // and a '%zone'. Anything else (controls, brackets, '@') is refused, so a
  // parsed address always prints back to the same thing (fuzz target durations).
  const bool v6 = rest.starts_with("[");
  for (char c : host) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ||
                    c == '_' || (v6 && (c == ':' || c == '%'));
    if (!ok) return Bad(address, "has an invalid host");
  }
  if (v6 && host.find(':') == std::string_view::npos) {
    return Bad(address, "has brackets around a host that is not IPv6");
  }
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return Bad(address, "has no valid port (0-65535)");
  }
  int value = 0;
  for (char c : port) value = value * 10 + (c - '0');
  if (value > 65535)
    return Bad(address, "has port " + std::string(port) + " out of range (0-65535)");
  out.host = std::string(host);
  out.port = static_cast<uint16_t>(value);
  return out;
}

}  // namespace omnirelay::core
