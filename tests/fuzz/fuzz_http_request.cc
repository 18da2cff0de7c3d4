// libFuzzer target: the HTTP/1.1 request parser with the server's limits and
// error mapping, then the Rpc-* header parsing of the HTTP inbound.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "omnirelay/http/http_server.h"
#include "omnirelay/transport/transport_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const omnirelay::http::HttpLimits limits{.max_header_bytes = 4096, .max_body_bytes = 4096};
  auto parsed = omnirelay::http::ParseHttpRequest(bytes, limits);
  // The server only ever answers 400, 413 or 431 to what it cannot take.
  if (parsed.error_status != 0 && parsed.error_status != 400 && parsed.error_status != 413 &&
      parsed.error_status != 431) {
    std::abort();
  }
  if (!parsed.complete) return 0;
  if (parsed.request.body.size() > limits.max_body_bytes) std::abort();
  omnirelay::core::RequestMeta meta;
  meta.headers = parsed.request.headers;
  if (omnirelay::transport::ApplyRpcHeaders(meta).ok()) {
    (void)meta.EffectiveDeadline(std::chrono::system_clock::now());
  }
  (void)parsed.request.QueryParam("q");
  return 0;
}
