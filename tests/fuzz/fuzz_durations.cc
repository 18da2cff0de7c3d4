// libFuzzer target: the one duration, timestamp and address parsers.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "omnirelay/core/address.h"
#include "omnirelay/core/request_meta.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto d = omnirelay::core::ParseDuration(text); d && d->count() < 0) std::abort();
  if (auto t = omnirelay::core::ParseTimestamp(text)) {
    // Round trip must parse again (formatting is millisecond precision).
    if (!omnirelay::core::ParseTimestamp(omnirelay::core::FormatTimestamp(*t))) std::abort();
  }
  if (auto hp = omnirelay::core::ParseHostPort(text); hp.ok()) {
    auto again = omnirelay::core::ParseHostPort(hp->Authority());
    if (!again.ok() || again->port != hp->port || again->host != hp->host) std::abort();
  }
  return 0;
}
