// libFuzzer target: JWT verification (libjwt HS256) and the gateway's
// request check, on arbitrary tokens and Authorization headers.
#include <cstddef>
#include <cstdint>
#include <string>

#include "omnirelay/auth/jwt.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const omnirelay::auth::JwtCodec codec("fuzz-secret-0123456789abcdef0123456789");
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)codec.Verify(text);
  const auto split = text.find('\n');
  const std::string authorization = text.substr(0, split);
  const std::string session = split == std::string::npos ? "" : text.substr(split + 1);
  (void)omnirelay::auth::VerifyRequest(codec, authorization, session);
  return 0;
}
