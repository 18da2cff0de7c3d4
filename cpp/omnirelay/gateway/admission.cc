#include "omnirelay/gateway/admission.h"

namespace omnirelay::gateway {
namespace {
bool Missing(const std::optional<std::string_view>& value) { return !value || value->empty(); }
}  // namespace

absl::StatusOr<std::string> Admit(const AdmissionRule& rule, const auth::JwtCodec* codec,
                                  const AdmissionHeaders& headers, std::string* reason) {
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
    } else {
      refused = auth::VerifyRequest(*codec, headers.authorization, headers.session_id).status();
    }
    if (!refused.ok()) {
      if (reason != nullptr) *reason = std::string(refused.message());
      return absl::UnauthenticatedError(kMissingOrInvalidToken);
    }
  }
  return rule.sticky_header.empty() ? std::string() : std::string(*headers.sticky);
}

}  // namespace omnirelay::gateway
