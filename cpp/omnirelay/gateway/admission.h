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
//
// VerifiedTokenCache (optional, one per thread) spares a session's repeated
// calls the verification itself (one HMAC-SHA256, two base64 decodes and two
// JSON parses, most of the frame path's cost per call): it remembers tokens
// that passed, keyed by the exact token bytes, with their session_id and
// expiry. A hit still checks the session-id header against the token's and
// the expiry against the codec's clock, so the answer is the same as without
// the cache; a different (or tampered) token is a miss and fully verified.
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

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

// Not thread-safe: one per thread. Bounded: emptied when it reaches kMaxEntries.
class VerifiedTokenCache {
 public:
  static constexpr size_t kMaxEntries = 4096;
  // The token passed VerifyRequest for `session` and has not expired.
  bool Admits(const auth::JwtCodec& codec, std::string_view token, std::string_view session) const;
  void Remember(const auth::JwtCodec& codec, std::string_view token, const auth::Claims& claims);
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string session_id;
    core::TimePoint expires_at;
  };
  // Lookups by string_view without building a std::string per call.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  const auth::JwtCodec* codec_ = nullptr;  // entries belong to one codec (secret)
  std::unordered_map<std::string, Entry, Hash, std::equal_to<>> entries_;
};

// OK with the sticky key ("" for a non-sticky route), or UNAUTHENTICATED with
// the contract's message. `codec` must be set when rule.require_token.
// `reason` (optional) receives the verifier's own message on a token failure.
// `cache` (optional): see VerifiedTokenCache.
absl::StatusOr<std::string> Admit(const AdmissionRule& rule, const auth::JwtCodec* codec,
                                  const AdmissionHeaders& headers, std::string* reason = nullptr,
                                  VerifiedTokenCache* cache = nullptr);

}  // namespace omnirelay::gateway
