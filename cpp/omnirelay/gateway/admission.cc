#include "omnirelay/gateway/admission.h"

namespace omnirelay::gateway {
namespace {
bool Missing(const std::optional<std::string_view>& value) { return !value || value->empty(); }
}  // namespace

bool VerifiedTokenCache::Admits(const auth::JwtCodec& codec, std::string_view token,
                                std::string_view session) const {
  if (codec_ != &codec) return false;
  auto it = entries_.find(token);
  // JwtCodec::Verify refuses a token at `exp` and after.
  return it != entries_.end() && it->second.session_id == session &&
         codec.clock().Now() < it->second.expires_at;
}

void VerifiedTokenCache::Remember(const auth::JwtCodec& codec, std::string_view token,
                                  const auth::Claims& claims) {
  if (codec_ != &codec || entries_.size() >= kMaxEntries) {
    entries_.clear();
    codec_ = &codec;
  }
  entries_[std::string(token)] = Entry{claims.session_id, claims.expires_at};
}

absl::StatusOr<std::string> Admit(const AdmissionRule& rule, const auth::JwtCodec* codec,
                                  const AdmissionHeaders& headers, std::string* reason,
                                  VerifiedTokenCache* cache) {
  if (!rule.sticky_header.empty() && Missing(headers.sticky)) {
    return absl::UnauthenticatedError("missing " + rule.sticky_header);
  }
  if (rule.require_token) {
    if (Missing(headers.session_id)) return absl::UnauthenticatedError("missing session-id");
    absl::Status refused;
    if (Missing(headers.authorization)) {
      refused = absl::UnauthenticatedError("missing token");
    } else if (codec == nullptr) {
      refused = absl::UnauthenticatedError("no verifier configured");
    } else if (cache == nullptr ||
               !cache->Admits(*codec, *headers.authorization, *headers.session_id)) {
      auto claims = auth::VerifyRequest(*codec, headers.authorization, headers.session_id);
      if (claims.ok() && cache != nullptr) cache->Remember(*codec, *headers.authorization, *claims);
      refused = claims.status();
    }
    if (!refused.ok()) {
      if (reason != nullptr) *reason = std::string(refused.message());
      return absl::UnauthenticatedError(kMissingOrInvalidToken);
    }
  }
  return rule.sticky_header.empty() ? std::string() : std::string(*headers.sticky);
}

}  // namespace omnirelay::gateway
