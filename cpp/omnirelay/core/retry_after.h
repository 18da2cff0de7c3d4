#pragma once
// A retry-after hint carried by a failed Status as a payload (whole
// milliseconds). The HTTP inbound answers it as a `retry-after` header
// (seconds, rounded up) plus `retry-after-ms`; the gRPC inbound as trailing
// metadata `retry-after-ms`, which the gRPC outbound turns back into the
// payload. ResourceLease backpressure uses it. Defined in status.cc.
#include <chrono>
#include <optional>

#include "omnirelay/core/status.h"

namespace omnirelay::core {

inline constexpr char kRetryAfterPayloadUrl[] = "type.omnirelay.dev/retry-after-ms";

// A copy of `status` carrying the hint (no-op for OK).
Status WithRetryAfter(Status status, std::chrono::milliseconds after);
std::optional<std::chrono::milliseconds> RetryAfter(const Status& status);

}  // namespace omnirelay::core
