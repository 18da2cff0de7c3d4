#include "omnirelay/transport/transport_util.h"

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

void ApplyRpcHeaders(core::RequestMeta& meta) {
  const auto& h = meta.headers;
  if (auto v = h.Get("rpc-caller")) meta.caller = std::string(*v);
  if (auto v = h.Get("rpc-encoding")) meta.encoding = std::string(*v);
  if (auto v = h.Get("rpc-shard-key")) meta.shard_key = std::string(*v);
  if (auto v = h.Get("rpc-routing-key")) meta.routing_key = std::string(*v);
  if (auto v = h.Get("rpc-routing-delegate")) meta.routing_delegate = std::string(*v);
  if (auto v = h.Get("rpc-ttl-ms")) {
    long long ms = 0;
    auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), ms);
    if (ec == std::errc() && ms >= 0) meta.time_to_live = std::chrono::milliseconds(ms);
  }
  if (auto v = h.Get("rpc-deadline")) {
    if (auto t = core::ParseTimestamp(*v)) meta.deadline = *t;
  }
}

}  // namespace omnirelay::transport
