#pragma once
// A retry-after hint carried by a failed Status as a payload (whole
// milliseconds). The HTTP inbound answers it as a `retry-after` header
// (seconds, rounded up) plus `retry-after-ms`; the gRPC inbound as trailing
// metadata `retry-after-ms`, which the gRPC outbound turns back into the
// payload. ResourceLease backpressure uses it. Defined in status.cc.
#include <chrono>
#include <optional>
#include <string>

#include "absl/strings/cord.h"
#include "omnirelay/core/status.h"

namespace omnirelay::core {

inline constexpr char kRetryAfterPayloadUrl[] = "type.omnirelay.dev/retry-after-ms";

// A copy of `status` carrying the hint (no-op for OK).
Status WithRetryAfter(Status status, std::chrono::milliseconds after);
std::optional<std::chrono::milliseconds> RetryAfter(const Status& status);

// The backpressure marker of a refusal (docs/backpressure.md): answered as
// the `rpc-backpressure` HTTP header / gRPC trailer, turned back into the
// payload by the gRPC outbound (so it survives hops).
inline constexpr char kBackpressurePayloadUrl[] = "type.omnirelay.dev/rpc-backpressure";
inline Status WithBackpressure(Status status, const std::string& value) {
  if (!status.ok()) status.SetPayload(kBackpressurePayloadUrl, absl::Cord(value));
  return status;
}
inline std::optional<std::string> Backpressure(const Status& status) {
  auto payload = status.GetPayload(kBackpressurePayloadUrl);
  if (!payload) return std::nullopt;
  return std::string(*payload);
}

}  // namespace omnirelay::core
