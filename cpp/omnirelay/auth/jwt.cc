#include "omnirelay/auth/jwt.h"

#include <jwt.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>

namespace omnirelay::auth {
namespace {

// Owns a jwt_t (libjwt frees nothing for us).
struct JwtDeleter {
  void operator()(jwt_t* jwt) const { jwt_free(jwt); }
};
using JwtPtr = std::unique_ptr<jwt_t, JwtDeleter>;

int64_t ToSeconds(core::TimePoint time) {
  return std::chrono::duration_cast<std::chrono::seconds>(time.time_since_epoch()).count();
}

core::TimePoint FromSeconds(int64_t seconds) {
  return core::TimePoint(std::chrono::seconds(seconds));
}

absl::Status Unauthenticated(const char* message) { return absl::UnauthenticatedError(message); }

// jwt_get_grant_int returns 0 and sets errno to ENOENT when the claim is
// absent; reset errno first so a stale value does not look like absence.
std::optional<int64_t> IntGrant(jwt_t* jwt, const char* name) {
  errno = 0;
  const long value = jwt_get_grant_int(jwt, name);
  if (errno != 0) return std::nullopt;
  return value;
}

std::string TextGrant(jwt_t* jwt, const char* name) {
  const char* value = jwt_get_grant(jwt, name);
  return value != nullptr ? std::string(value) : std::string();
}

}  // namespace

JwtCodec::JwtCodec(std::string secret, std::shared_ptr<core::Clock> clock)
    : secret_(std::move(secret)), clock_(clock ? std::move(clock) : core::SystemClock::Shared()) {}

absl::StatusOr<std::string> JwtCodec::Issue(std::string_view username, std::string_view session_id,
                                            std::string_view role, core::Duration ttl,
                                            Claims* claims_out) const {
  Claims claims;
  claims.username = std::string(username);
  claims.session_id = std::string(session_id);
  claims.role = std::string(role);
  claims.issued_at = FromSeconds(ToSeconds(clock_->Now()));
  claims.expires_at = FromSeconds(ToSeconds(clock_->Now() + ttl));
  auto token = Sign(claims);
  if (token.ok() && claims_out != nullptr) *claims_out = claims;
  return token;
}

absl::StatusOr<std::string> JwtCodec::Sign(const Claims& claims) const {
  jwt_t* raw = nullptr;
  if (jwt_new(&raw) != 0) return absl::InternalError("jwt_new failed");
  JwtPtr jwt(raw);
  if (jwt_add_grant(jwt.get(), "sub", claims.username.c_str()) != 0 ||
      jwt_add_grant(jwt.get(), "session_id", claims.session_id.c_str()) != 0 ||
      jwt_add_grant(jwt.get(), "role", claims.role.c_str()) != 0 ||
      jwt_add_grant_int(jwt.get(), "iat", ToSeconds(claims.issued_at)) != 0 ||
      jwt_add_grant_int(jwt.get(), "exp", ToSeconds(claims.expires_at)) != 0) {
    return absl::InternalError("jwt_add_grant failed");
  }
  if (jwt_set_alg(jwt.get(), JWT_ALG_HS256, reinterpret_cast<const unsigned char*>(secret_.data()),
                  static_cast<int>(secret_.size())) != 0) {
    return absl::InternalError("jwt_set_alg failed");
  }
  char* encoded = jwt_encode_str(jwt.get());
  if (encoded == nullptr) return absl::InternalError("jwt_encode_str failed");
  std::string token(encoded);
  std::free(encoded);  // libjwt 1.10 documents free() for encoded strings
  return token;
}

absl::StatusOr<Claims> JwtCodec::Verify(std::string_view token) const {
  if (token.empty()) return Unauthenticated("missing token");
  const std::string text(token);
  // Two passes so that a client learns *why* a token is refused: first parse
  // without a key (structure, JSON, alg), then verify the signature.
  jwt_t* raw = nullptr;
  if (jwt_decode(&raw, text.c_str(), nullptr, 0) != 0 || raw == nullptr) {
    return Unauthenticated("malformed token");
  }
  JwtPtr unverified(raw);
  // Without a key libjwt reports alg "none" for every token, so read the
  // header's own "alg" here.
  const char* alg = jwt_get_header(unverified.get(), "alg");
  if (alg == nullptr || std::string_view(alg) != "HS256") {
    return Unauthenticated("unsupported token algorithm");
  }
  raw = nullptr;
  if (jwt_decode(&raw, text.c_str(), reinterpret_cast<const unsigned char*>(secret_.data()),
                 static_cast<int>(secret_.size())) != 0 ||
      raw == nullptr) {
    return Unauthenticated("invalid token signature");
  }
  JwtPtr jwt(raw);
  // libjwt keeps the header's alg; check again on the verified object so a
  // downgrade can never slip through between the two decodes.
  if (jwt_get_alg(jwt.get()) != JWT_ALG_HS256) {
    return Unauthenticated("unsupported token algorithm");
  }
  const auto exp = IntGrant(jwt.get(), "exp");
  Claims claims;
  claims.username = TextGrant(jwt.get(), "sub");
  claims.session_id = TextGrant(jwt.get(), "session_id");
  claims.role = TextGrant(jwt.get(), "role");
  if (!exp || claims.username.empty() || claims.session_id.empty()) {
    return Unauthenticated("token is missing claims");
  }
  claims.expires_at = FromSeconds(*exp);
  claims.issued_at = FromSeconds(IntGrant(jwt.get(), "iat").value_or(0));
  if (ToSeconds(clock_->Now()) >= *exp) return Unauthenticated("token expired");
  return claims;
}

absl::StatusOr<Claims> VerifyRequest(const JwtCodec& codec,
                                     std::optional<std::string_view> authorization,
                                     std::optional<std::string_view> session_id) {
  if (!authorization || authorization->empty()) return Unauthenticated("missing token");
  if (!session_id || session_id->empty()) return Unauthenticated("missing session-id");
  auto claims = codec.Verify(*authorization);
  if (!claims.ok()) return claims.status();
  if (claims->session_id != *session_id) {
    return Unauthenticated("session-id does not match token");
  }
  return claims;
}

}  // namespace omnirelay::auth
