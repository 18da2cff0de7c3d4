#include "omnirelay/core/status.h"

#include <array>
#include <cctype>
#include <charconv>

#include "absl/strings/cord.h"
#include "omnirelay/core/retry_after.h"

namespace omnirelay::core {
namespace {

struct CodeInfo {
  StatusCode code;
  std::string_view name;        // canonical gRPC spelling
  std::string_view camel_name;  // the spelling of the .NET predecessor / Python classes
  int http_status;
};

// THE table. docs/errors.md mirrors it; status_test.cc checks every row.
constexpr std::array<CodeInfo, 17> kCodes = {{
    {StatusCode::kOk, "OK", "Ok", 200},
    {StatusCode::kCancelled, "CANCELLED", "Cancelled", 499},
    {StatusCode::kUnknown, "UNKNOWN", "Unknown", 500},
    {StatusCode::kInvalidArgument, "INVALID_ARGUMENT", "InvalidArgument", 400},
    {StatusCode::kDeadlineExceeded, "DEADLINE_EXCEEDED", "DeadlineExceeded", 504},
    {StatusCode::kNotFound, "NOT_FOUND", "NotFound", 404},
    {StatusCode::kAlreadyExists, "ALREADY_EXISTS", "AlreadyExists", 409},
    {StatusCode::kPermissionDenied, "PERMISSION_DENIED", "PermissionDenied", 403},
    {StatusCode::kResourceExhausted, "RESOURCE_EXHAUSTED", "ResourceExhausted", 429},
    {StatusCode::kFailedPrecondition, "FAILED_PRECONDITION", "FailedPrecondition", 412},
    {StatusCode::kAborted, "ABORTED", "Aborted", 409},
    {StatusCode::kOutOfRange, "OUT_OF_RANGE", "OutOfRange", 400},
    {StatusCode::kUnimplemented, "UNIMPLEMENTED", "Unimplemented", 501},
    {StatusCode::kInternal, "INTERNAL", "Internal", 500},
    {StatusCode::kUnavailable, "UNAVAILABLE", "Unavailable", 503},
    {StatusCode::kDataLoss, "DATA_LOSS", "DataLoss", 500},
    {StatusCode::kUnauthenticated, "UNAUTHENTICATED", "Unauthenticated", 401},
}};

const CodeInfo* Find(StatusCode code) {
  const auto index = static_cast<size_t>(code);
  // kCodes is ordered by numeric code, so the index is the code.
  return index < kCodes.size() ? &kCodes[index] : nullptr;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

Status MakeStatus(StatusCode code, std::string_view message, std::string_view error_code) {
  Status status(code, ToAbsl(message));
  return error_code.empty() ? status : WithErrorCode(std::move(status), error_code);
}

Status WithErrorCode(Status status, std::string_view error_code) {
  if (!status.ok() && !error_code.empty()) {
    status.SetPayload(kErrorCodePayloadUrl, absl::Cord(ToAbsl(error_code)));
  }
  return status;
}

std::optional<std::string> ErrorCode(const Status& status) {
  auto payload = status.GetPayload(kErrorCodePayloadUrl);
  if (!payload) return std::nullopt;
  return std::string(*payload);
}

Status WithRetryAfter(Status status, std::chrono::milliseconds after) {
  if (!status.ok()) {
    status.SetPayload(kRetryAfterPayloadUrl, absl::Cord(std::to_string(after.count())));
  }
  return status;
}

std::optional<std::chrono::milliseconds> RetryAfter(const Status& status) {
  auto payload = status.GetPayload(kRetryAfterPayloadUrl);
  if (!payload) return std::nullopt;
  const std::string text(*payload);
  long long ms = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
  if (ec != std::errc() || ms < 0) return std::nullopt;
  return std::chrono::milliseconds(ms);
}

std::string_view StatusCodeName(StatusCode code) {
  const CodeInfo* info = Find(code);
  return info ? info->name : "UNKNOWN";
}

std::optional<StatusCode> ParseStatusCodeName(std::string_view name) {
  int number = 0;
  auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), number);
  if (ec == std::errc() && end == name.data() + name.size()) {
    if (number >= 0 && static_cast<size_t>(number) < kCodes.size()) {
      return kCodes[static_cast<size_t>(number)].code;
    }
    return std::nullopt;
  }
  for (const auto& info : kCodes) {
    if (EqualsIgnoreCase(info.name, name) || EqualsIgnoreCase(info.camel_name, name)) {
      return info.code;
    }
  }
  return std::nullopt;
}

int ToHttpStatus(StatusCode code) {
  const CodeInfo* info = Find(code);
  return info ? info->http_status : 500;
}

StatusCode FromHttpStatus(int http_status) {
  switch (http_status) {
    case 200:
    case 201:
    case 202:
    case 204:
      return StatusCode::kOk;
    case 400:
      return StatusCode::kInvalidArgument;
    case 401:
      return StatusCode::kUnauthenticated;
    case 403:
      return StatusCode::kPermissionDenied;
    case 404:
      return StatusCode::kNotFound;
    case 408:
    case 504:
      return StatusCode::kDeadlineExceeded;
    case 409:
      return StatusCode::kAborted;
    case 412:
      return StatusCode::kFailedPrecondition;
    case 429:
      return StatusCode::kResourceExhausted;
    case 499:
      return StatusCode::kCancelled;
    case 501:
      return StatusCode::kUnimplemented;
    case 502:
    case 503:
      return StatusCode::kUnavailable;
    default:
      if (http_status >= 400 && http_status < 500) return StatusCode::kInvalidArgument;
      return http_status >= 500 ? StatusCode::kInternal : StatusCode::kUnknown;
  }
}

StatusCode GrpcStatusFromHttp(int http_status) {
  switch (http_status) {
    case 400:
      return StatusCode::kInternal;
    case 401:
      return StatusCode::kUnauthenticated;
    case 403:
      return StatusCode::kPermissionDenied;
    case 404:
      return StatusCode::kUnimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return StatusCode::kUnavailable;
    default:
      return StatusCode::kUnknown;
  }
}

bool IsServerFailure(StatusCode code) {
  switch (code) {
    case StatusCode::kUnavailable:
    case StatusCode::kInternal:
    case StatusCode::kDataLoss:
    case StatusCode::kUnimplemented:
    case StatusCode::kResourceExhausted:
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kUnknown:
      return true;
    default:
      return false;
  }
}

bool IsRetryable(StatusCode code) {
  // Only codes that say "the server did not act on it, try again"; never
  // DeadlineExceeded (the budget is spent) nor client errors.
  return code == StatusCode::kUnavailable || code == StatusCode::kResourceExhausted ||
         code == StatusCode::kAborted;
}

}  // namespace omnirelay::core
