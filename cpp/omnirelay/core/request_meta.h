#pragma once
// Transport-neutral description of one request: who is called, by whom, how
// it is encoded, how it may be routed, and by when it must finish.
//
// The HTTP transport maps these to `Rpc-*` headers, the gRPC transport to
// metadata (`rpc-caller`, `rpc-shard-key`, ... and the gRPC deadline).
// Value type: copy freely; not synchronised.
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "omnirelay/core/clock.h"

namespace omnirelay::core {

// Header map with case-insensitive names (HTTP/2 and gRPC lower-case them,
// HTTP/1.1 clients may not). Names are stored lower-cased; insertion order is
// kept so forwarded headers keep their order. Small: a linear scan beats a hash.
class Headers {
 public:
  void Set(std::string_view name, std::string value);                // replaces any existing value
  void Add(std::string_view name, std::string value);                // keeps existing values
  std::optional<std::string_view> Get(std::string_view name) const;  // first value
  bool Contains(std::string_view name) const { return Get(name).has_value(); }
  bool Remove(std::string_view name);
  const std::vector<std::pair<std::string, std::string>>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }

  static std::string Normalize(std::string_view name);

 private:
  std::vector<std::pair<std::string, std::string>> entries_;
};

struct RequestMeta {
  std::string service;
  std::string procedure;
  std::string caller;
  std::string encoding;
  std::string transport;
  std::string shard_key;
  std::string routing_key;
  std::string routing_delegate;
  std::optional<Duration> time_to_live;
  std::optional<TimePoint> deadline;
  Headers headers;
  // Set by the inbound transport, never from headers (a client cannot forge
  // them): the TCP peer ("127.0.0.1:5000") and the verified TLS client
  // certificate's principal (SAN or "sha256:<thumbprint>"), empty without mTLS.
  std::string peer_address;
  std::string peer_identity;

  // The deadline this request must meet: the earlier of `deadline` and
  // `now + time_to_live`; nullopt when neither is set (such a request waits
  // for nothing and never ends in DeadlineExceeded because of a timer).
  std::optional<TimePoint> EffectiveDeadline(TimePoint now) const;
};

// Formats/parses RFC 3339 / ISO-8601 UTC timestamps ("2026-11-23T10:00:00.250Z").
// Parse accepts a 'Z' or a numeric offset, and fractional seconds.
std::string FormatTimestamp(TimePoint time);
std::optional<TimePoint> ParseTimestamp(std::string_view text);

// Parses "250ms", "1.5s", "2m", "10m", "1h", "500us", or a bare number of
// milliseconds. Returns nullopt for anything else (and for negatives).
std::optional<Duration> ParseDuration(std::string_view text);

}  // namespace omnirelay::core
