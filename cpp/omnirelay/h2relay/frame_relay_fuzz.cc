// libFuzzer target: random bytes into the frame relay's inbound HTTP/2
// session. Whatever the input, the relay must answer with nghttp2's protocol
// error (or a gRPC status) and never crash, leak or touch freed memory.
#include <cstddef>
#include <cstdint>

#include "omnirelay/h2relay/frame_relay.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  omnirelay::h2relay::FeedInboundForTesting(data, size).IgnoreError();
  return 0;
}
