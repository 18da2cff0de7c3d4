#pragma once
// JWT (HS256) issue and verification on libjwt, and the one request check the
// gateway runs on every MyService* call.
//
// Token claims: sub = user name, session_id, role, iat and exp (seconds since
// the epoch). Verification is strict: the header must say HS256 (an "alg":
// "none" token or any other algorithm is refused even when libjwt would
// accept it), the signature must match the shared secret, `exp` must be in
// the future by the verifier's clock, and `sub`/`session_id` must be present.
//
// Every failure is UNAUTHENTICATED with one of these exact messages (the
// gateway checks the session-id first and answers every token failure with
// "missing or invalid token", logging this message as the reason;
// gateway/admission.h, docs/session-gateway.md):
//   "missing token"                 no or empty `authorization` metadata
//   "missing session-id"            no or empty `session-id` metadata
//   "malformed token"               not a decodable JWT (incl. "Bearer <jwt>")
//   "unsupported token algorithm"   header alg is not HS256
//   "invalid token signature"       signed with another key, or tampered with
//   "token expired"                 exp <= now
//   "token is missing claims"       no sub, session_id or exp
//   "session-id does not match token"   header differs from the token's claim
//
// Thread-safety: JwtCodec is immutable after construction; all methods are
// thread-safe (each call owns its libjwt object).
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/status.h"

namespace omnirelay::auth {

struct Claims {
  std::string username;        // "sub"
  std::string session_id;      // "session_id"
  std::string role;            // "role"
  core::TimePoint issued_at;   // "iat", whole seconds
  core::TimePoint expires_at;  // "exp", whole seconds
};

class JwtCodec {
 public:
  // `secret` is the HMAC key (see secrets.h); `clock` decides expiry (a
  // ManualClock in tests), defaulting to the system clock.
  explicit JwtCodec(std::string secret, std::shared_ptr<core::Clock> clock = nullptr);

  // Signs a token for `username`/`session_id`/`role` valid for `ttl` from now.
  // Returns the token; `claims_out`, when given, receives the exact claims
  // (expiry rounded down to whole seconds, as JWT stores it).
  absl::StatusOr<std::string> Issue(std::string_view username, std::string_view session_id,
                                    std::string_view role, core::Duration ttl,
                                    Claims* claims_out = nullptr) const;

  // Signs arbitrary claims (tests use it to mint expired tokens).
  absl::StatusOr<std::string> Sign(const Claims& claims) const;

  // Verifies `token` and returns its claims, or UNAUTHENTICATED (see above).
  absl::StatusOr<Claims> Verify(std::string_view token) const;

  const core::Clock& clock() const { return *clock_; }

 private:
  std::string secret_;
  std::shared_ptr<core::Clock> clock_;
};

// The gateway's check for a call: `authorization` and `session_id` are the
// values of the `authorization` and `session-id` metadata (nullopt when
// absent). The token is the raw JWT, no "Bearer " prefix (the wire contract).
// Order: missing token, missing session-id, then Verify, then the match of
// the token's session_id with the header. Returns the claims on success.
absl::StatusOr<Claims> VerifyRequest(const JwtCodec& codec,
                                     std::optional<std::string_view> authorization,
                                     std::optional<std::string_view> session_id);

}  // namespace omnirelay::auth
