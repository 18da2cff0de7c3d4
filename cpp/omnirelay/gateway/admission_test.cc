// Check order and messages of a MyService* call's admission (issue 16): the
// session before the token, one message for every token failure.
#include "omnirelay/gateway/admission.h"

#include <gtest/gtest.h>

#include <chrono>

namespace omnirelay::gateway {
namespace {

constexpr char kSecret[] = "0123456789abcdef0123456789abcdef";
constexpr char kOtherSecret[] = "fedcba9876543210fedcba9876543210";

class AdmissionTest : public ::testing::Test {
 protected:
  std::string TokenFor(const std::string& session, const auth::JwtCodec& codec) {
    auto token = codec.Issue("testuser", session, "user", std::chrono::hours(1));
    EXPECT_TRUE(token.ok()) << token.status();
    return token.ok() ? *token : "";
  }
  // The route of the session stack: JWT required, sticky by session-id.
  absl::StatusOr<std::string> MyService(std::optional<std::string_view> authorization,
                                        std::optional<std::string_view> session_id,
                                        std::string* reason = nullptr) {
    return Admit(rule_, &codec_, {authorization, session_id, session_id}, reason);
  }
  static void ExpectRefused(const absl::StatusOr<std::string>& got, const std::string& message) {
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(std::string(got.status().message()), message);
  }

  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  auth::JwtCodec codec_{kSecret, clock_};
  AdmissionRule rule_{true, "session-id"};
};

TEST_F(AdmissionTest, ValidCallYieldsTheStickyKey) {
  auto got = MyService(TokenFor("s-1", codec_), "s-1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "s-1");
}

TEST_F(AdmissionTest, SessionIsCheckedBeforeTheToken) {
  // No metadata at all: the session is reported, not the token.
  ExpectRefused(MyService(std::nullopt, std::nullopt), "missing session-id");
  ExpectRefused(MyService("", ""), "missing session-id");
  ExpectRefused(MyService("not-a-jwt", std::nullopt), "missing session-id");
  ExpectRefused(MyService(TokenFor("s-1", codec_), ""), "missing session-id");
}

TEST_F(AdmissionTest, EveryTokenFailureIsOneMessageWithItsReasonForTheLog) {
  auth::JwtCodec other(kOtherSecret, clock_);
  auth::Claims expired_claims{"testuser", "s-1", "user", clock_->Now() - std::chrono::hours(2),
                              clock_->Now() - std::chrono::hours(1)};
  auto expired = codec_.Sign(expired_claims);
  ASSERT_TRUE(expired.ok());
  const std::string valid = TokenFor("s-1", codec_);
  const std::vector<std::pair<std::optional<std::string>, std::string>> cases = {
      {std::nullopt, "missing token"},
      {std::string(), "missing token"},
      {std::string("not-a-jwt"), "malformed token"},
      {"Bearer " + valid, "malformed token"},
      {TokenFor("s-1", other), "invalid token signature"},
      {*expired, "token expired"},
      {TokenFor("s-2", codec_), "session-id does not match token"},
  };
  for (const auto& [token, why] : cases) {
    std::string reason;
    std::optional<std::string_view> header;
    if (token) header = *token;
    ExpectRefused(MyService(header, "s-1", &reason), kMissingOrInvalidToken);
    EXPECT_EQ(reason, why) << (token ? *token : "(absent)");
  }
}

TEST_F(AdmissionTest, RoutesWithoutTokenOrStickiness) {
  // authorization none + round-robin: nothing is required.
  auto open = Admit({false, ""}, nullptr, {});
  ASSERT_TRUE(open.ok());
  EXPECT_EQ(*open, "");
  // Sticky by another header without a token: only that header is required.
  AdmissionRule by_tenant{false, "tenant"};
  ExpectRefused(Admit(by_tenant, nullptr, {std::nullopt, "s-1", std::nullopt}), "missing tenant");
  auto tenant = Admit(by_tenant, nullptr, {std::nullopt, std::nullopt, "t-7"});
  ASSERT_TRUE(tenant.ok());
  EXPECT_EQ(*tenant, "t-7");
  // Token required on a round-robin route: still session first, then the token.
  AdmissionRule token_only{true, ""};
  ExpectRefused(Admit(token_only, &codec_, {std::nullopt, std::nullopt, std::nullopt}),
                "missing session-id");
  ExpectRefused(Admit(token_only, &codec_, {std::nullopt, "s-1", std::nullopt}),
                kMissingOrInvalidToken);
  const std::string valid = TokenFor("s-1", codec_);
  auto ok = Admit(token_only, &codec_, {valid, "s-1", std::nullopt});
  ASSERT_TRUE(ok.ok()) << ok.status();
}

// The frame path's per-thread cache answers exactly as a full verification:
// same session only, never past `exp`, a tampered token or another secret is
// verified (and refused) in full.
TEST_F(AdmissionTest, VerifiedTokenCacheGivesTheSameAnswers) {
  VerifiedTokenCache cache;
  const std::string token = TokenFor("s-1", codec_);
  auto admit = [&](std::string_view t, std::string_view session, const auth::JwtCodec* codec,
                   std::string* reason = nullptr) {
    return Admit(rule_, codec, {t, session, session}, reason, &cache);
  };
  ASSERT_TRUE(admit(token, "s-1", &codec_).ok());
  EXPECT_EQ(cache.size(), 1u);
  ASSERT_TRUE(admit(token, "s-1", &codec_).ok());  // a hit
  EXPECT_EQ(cache.size(), 1u);
  std::string reason;
  ExpectRefused(admit(token, "s-2", &codec_, &reason), kMissingOrInvalidToken);
  EXPECT_EQ(reason, "session-id does not match token");
  std::string tampered = token;
  tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
  ExpectRefused(admit(tampered, "s-1", &codec_), kMissingOrInvalidToken);
  // Another secret: the cached entry is not its answer.
  auth::JwtCodec other(kOtherSecret, clock_);
  ExpectRefused(admit(token, "s-1", &other), kMissingOrInvalidToken);
  ASSERT_TRUE(admit(token, "s-1", &codec_).ok());
  // At exp the cached token is refused like any expired one.
  clock_->Advance(std::chrono::hours(1));
  reason.clear();
  ExpectRefused(admit(token, "s-1", &codec_, &reason), kMissingOrInvalidToken);
  EXPECT_EQ(reason, "token expired");
}

}  // namespace
}  // namespace omnirelay::gateway
