#pragma once
// Admission of a call on a gateway route: which credentials are checked, in
// which order, and the exact message the client gets (issue 16; the order and
// messages are the MyGateway contract's, docs/session-gateway.md "Error table").
//
//   1. A sticky route needs its sticky header: missing or empty ->
//      UNAUTHENTICATED "missing <header>" ("missing session-id").
//   2. A route with authorization `required` needs `session-id` (the token is
//      bound to it): missing or empty -> UNAUTHENTICATED "missing session-id".
//      The session is always checked before the token.
//   3. Then the token (`authorization`): missing, empty, or failing any check
//      of auth::VerifyRequest (format, algorithm, signature, claims, expiry,
//      issued for another session) -> UNAUTHENTICATED
//      "missing or invalid token". One message for every token failure, so a
//      caller learns nothing about why a token was refused; the precise reason
//      is returned in `reason` for the gateway's log.
//
// Pure function: no I/O, thread-safe (the codec is immutable).
#include <optional>
#include <string>
#include <string_view>

#include "omnirelay/auth/jwt.h"
#include "omnirelay/core/status.h"

namespace omnirelay::gateway {

inline constexpr char kMissingOrInvalidToken[] = "missing or invalid token";

struct AdmissionRule {
  bool require_token = false;  // route authorization `required`
  std::string sticky_header;   // "" = not a sticky route
};

// The headers of one call that admission looks at (absent = nullopt).
struct AdmissionHeaders {
  std::optional<std::string_view> authorization;
  std::optional<std::string_view> session_id;
  std::optional<std::string_view> sticky;  // the value of rule.sticky_header
};

// OK with the sticky key ("" for a non-sticky route), or UNAUTHENTICATED with
// the contract's message. `codec` must be set when rule.require_token.
// `reason` (optional) receives the verifier's own message on a token failure.
absl::StatusOr<std::string> Admit(const AdmissionRule& rule, const auth::JwtCodec* codec,
                                  const AdmissionHeaders& headers, std::string* reason = nullptr);

}  // namespace omnirelay::gateway
