#pragma once
// The one error model of OmniRelay.
//
// Every fallible call in the core returns absl::Status / absl::StatusOr<T>.
// absl's status codes are numerically identical to gRPC's, so a Status maps
// to the wire without a table. What OmniRelay adds:
//   * an optional machine-readable error-code string (for example
//     "peer-pool-exhausted"), carried as a Status payload so it survives any
//     code that passes the Status along unchanged;
//   * the one table that maps codes to HTTP statuses (docs/errors.md shows the
//     same table; tests/status_test keeps the two in step);
//   * canonical upper-snake names (RESOURCE_EXHAUSTED) used in logs, metrics
//     tags (rpc.status), the HTTP `Rpc-Status` header and Python.
// Thread-safety: all functions are pure.
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace omnirelay::core {

using absl::Status;
using absl::StatusCode;
using absl::StatusOr;

// Payload type URL under which the error-code string is stored.
inline constexpr char kErrorCodePayloadUrl[] = "type.omnirelay.dev/error-code";

// Debian's abseil is built with its own string_view type; convert at the seam.
inline absl::string_view ToAbsl(std::string_view text) { return {text.data(), text.size()}; }
inline std::string_view FromAbsl(absl::string_view text) { return {text.data(), text.size()}; }

// Builds a status with `code`, `message` and, when non-empty, an error code.
Status MakeStatus(StatusCode code, std::string_view message, std::string_view error_code = {});

// Returns a copy of `status` carrying `error_code` (no-op for OK).
Status WithErrorCode(Status status, std::string_view error_code);

// The error-code string of `status`, if one was attached.
std::optional<std::string> ErrorCode(const Status& status);

// "RESOURCE_EXHAUSTED" etc.; "UNKNOWN" for codes outside the gRPC range.
std::string_view StatusCodeName(StatusCode code);

// Parses a name as produced by StatusCodeName (case-insensitive, also accepts
// the CamelCase spelling "ResourceExhausted" and a decimal code number).
std::optional<StatusCode> ParseStatusCodeName(std::string_view name);

// Maps a status code to the HTTP status an HTTP inbound answers with.
int ToHttpStatus(StatusCode code);

// Maps an HTTP status (as received by an HTTP outbound without an
// `Rpc-Status` header) back to the closest status code.
StatusCode FromHttpStatus(int http_status);

// The gRPC specification's "HTTP to gRPC Status Code Mapping": the status a
// gRPC client reports for a response whose HTTP status is not 200 and that
// carries no grpc-status (a proxy's error page, a load balancer's 503). Not
// the inverse of ToHttpStatus: 400 is INTERNAL here, 404 UNIMPLEMENTED, 429
// UNAVAILABLE, anything else UNKNOWN. Used by the gRPC load generator and the
// HTTP/2 frame relay.
StatusCode GrpcStatusFromHttp(int http_status);

// Whether a failure with this code is the server's fault. Circuit breakers
// and health feedback count only these; client errors never trip a breaker.
bool IsServerFailure(StatusCode code);

// Codes that a retry middleware may retry for idempotent calls.
bool IsRetryable(StatusCode code);

}  // namespace omnirelay::core
