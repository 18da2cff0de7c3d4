#include "omnirelay/transport/transport_util.h"

#include <algorithm>
#include <charconv>

namespace omnirelay::transport {

bool IsTransportHeader(std::string_view name) {
  if (name.empty() || name.front() == ':' || name.starts_with("grpc-")) return true;
  // Middleware bookkeeping for one hop (stream span/metric start times).
  if (name.starts_with("x-omnirelay-internal-")) return true;
  for (std::string_view h : {"content-type", "te", "user-agent", "host", "content-length",
                             "connection", "keep-alive", "transfer-encoding", "upgrade",
                             "accept-encoding", "accept", "proxy-connection", "http2-settings"}) {
    if (name == h) return true;
  }
  return false;
}

bool IsRpcHeader(std::string_view name) {
  for (std::string_view h :
       {"rpc-caller", "rpc-encoding", "rpc-shard-key", "rpc-routing-key", "rpc-routing-delegate",
        "rpc-ttl-ms", "rpc-deadline", "rpc-service", "rpc-procedure"}) {
    if (name == h) return true;
  }
  return false;
}

absl::Status ApplyRpcHeaders(core::RequestMeta& meta) {
  const auto& h = meta.headers;
  if (auto v = h.Get("rpc-caller")) meta.caller = std::string(*v);
  if (auto v = h.Get("rpc-encoding")) meta.encoding = std::string(*v);
  if (auto v = h.Get("rpc-shard-key")) meta.shard_key = std::string(*v);
  if (auto v = h.Get("rpc-routing-key")) meta.routing_key = std::string(*v);
  if (auto v = h.Get("rpc-routing-delegate")) meta.routing_delegate = std::string(*v);
  if (auto v = h.Get("rpc-ttl-ms")) {
    long long ms = -1;
    const bool digits_only = !v->empty() && std::all_of(v->begin(), v->end(), [](char c) {
      return c >= '0' && c <= '9';
    });
    auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), ms);
    if (!digits_only || ec != std::errc() || ptr != v->data() + v->size() || ms > kMaxTtlMs) {
      return core::MakeStatus(absl::StatusCode::kInvalidArgument,
                              "Rpc-Ttl-Ms: '" + std::string(v->substr(0, 64)) +
                                  "' is not a whole number of milliseconds in [0, " +
                                  std::to_string(kMaxTtlMs) + "]",
                              "bad-rpc-ttl-ms");
    }
    meta.time_to_live = std::chrono::milliseconds(ms);
  }
  if (auto v = h.Get("rpc-deadline")) {
    auto t = core::ParseTimestamp(*v);
    if (!t) {
      return core::MakeStatus(absl::StatusCode::kInvalidArgument,
                              "Rpc-Deadline: '" + std::string(v->substr(0, 64)) +
                                  "' is not an RFC 3339 timestamp (2026-11-23T10:00:00.250Z)",
                              "bad-rpc-deadline");
    }
    meta.deadline = *t;
  }
  return absl::OkStatus();
}

}  // namespace omnirelay::transport
