#include "omnirelay/auth/jwt.h"

#include <gtest/gtest.h>

#include <chrono>

namespace omnirelay::auth {
namespace {

using std::chrono::hours;
using std::chrono::seconds;

constexpr char kSecret[] = "0123456789abcdef0123456789abcdef";
constexpr char kOtherSecret[] = "fedcba9876543210fedcba9876543210";

class JwtTest : public ::testing::Test {
 protected:
  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  JwtCodec codec_{kSecret, clock_};
};

void ExpectUnauthenticated(const absl::StatusOr<Claims>& result, const std::string& message) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(std::string(result.status().message()), message);
}

TEST_F(JwtTest, RoundTripCarriesClaims) {
  Claims issued;
  auto token = codec_.Issue("alice", "session-1", "admin", hours(1), &issued);
  ASSERT_TRUE(token.ok()) << token.status();
  auto claims = codec_.Verify(*token);
  ASSERT_TRUE(claims.ok()) << claims.status();
  EXPECT_EQ(claims->username, "alice");
  EXPECT_EQ(claims->session_id, "session-1");
  EXPECT_EQ(claims->role, "admin");
  EXPECT_EQ(claims->expires_at, issued.expires_at);
  EXPECT_EQ(claims->issued_at, issued.issued_at);
  EXPECT_EQ(claims->expires_at - claims->issued_at, hours(1));
}

TEST_F(JwtTest, ExpiredTokenIsRefusedAtExpiry) {
  auto token = codec_.Issue("alice", "s", "user", seconds(10));
  ASSERT_TRUE(token.ok());
  clock_->Advance(seconds(9));
  EXPECT_TRUE(codec_.Verify(*token).ok());
  clock_->Advance(seconds(1));
  ExpectUnauthenticated(codec_.Verify(*token), "token expired");
}

TEST_F(JwtTest, SignedWithAnotherKeyIsBadSignature) {
  JwtCodec other(kOtherSecret, clock_);
  auto token = other.Issue("alice", "s", "user", hours(1));
  ASSERT_TRUE(token.ok());
  ExpectUnauthenticated(codec_.Verify(*token), "invalid token signature");
}

TEST_F(JwtTest, TamperedPayloadIsBadSignature) {
  auto token = codec_.Issue("alice", "s", "user", hours(1));
  auto forged = codec_.Issue("mallory", "s", "admin", hours(1));
  ASSERT_TRUE(token.ok() && forged.ok());
  // Header and payload of the forged token, signature of the genuine one.
  const std::string spliced =
      forged->substr(0, forged->rfind('.')) + token->substr(token->rfind('.'));
  ExpectUnauthenticated(codec_.Verify(spliced), "invalid token signature");
}

TEST_F(JwtTest, MalformedTokens) {
  auto token = codec_.Issue("alice", "s", "user", hours(1));
  ASSERT_TRUE(token.ok());
  ExpectUnauthenticated(codec_.Verify("not-a-jwt"), "malformed token");
  ExpectUnauthenticated(codec_.Verify("a.b.c"), "malformed token");
  ExpectUnauthenticated(codec_.Verify("Bearer " + *token), "malformed token");
  ExpectUnauthenticated(codec_.Verify(""), "missing token");
}

TEST_F(JwtTest, UnsignedAlgNoneTokenIsRefused) {
  // {"alg":"none"} . {"sub":"alice","session_id":"s","exp":<far future>} .
  const std::string header = "eyJhbGciOiJub25lIn0";
  const std::string payload = "eyJzdWIiOiJhbGljZSIsInNlc3Npb25faWQiOiJzIiwiZXhwIjo0MTAyNDQ0ODAwfQ";
  ExpectUnauthenticated(codec_.Verify(header + "." + payload + "."), "unsupported token algorithm");
}

TEST_F(JwtTest, MissingClaimsAreRefused) {
  Claims claims;
  claims.username = "alice";
  claims.session_id = "";
  claims.expires_at = clock_->Now() + hours(1);
  auto token = codec_.Sign(claims);
  ASSERT_TRUE(token.ok());
  ExpectUnauthenticated(codec_.Verify(*token), "token is missing claims");
}

TEST_F(JwtTest, VerifyRequestChecksMetadata) {
  auto token = codec_.Issue("alice", "session-1", "user", hours(1));
  ASSERT_TRUE(token.ok());
  auto ok = VerifyRequest(codec_, *token, "session-1");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->username, "alice");

  ExpectUnauthenticated(VerifyRequest(codec_, *token, std::nullopt), "missing session-id");
  ExpectUnauthenticated(VerifyRequest(codec_, *token, ""), "missing session-id");
  ExpectUnauthenticated(VerifyRequest(codec_, std::nullopt, "session-1"), "missing token");
  ExpectUnauthenticated(VerifyRequest(codec_, "", "session-1"), "missing token");
  ExpectUnauthenticated(VerifyRequest(codec_, *token, "session-2"),
                        "session-id does not match token");
  ExpectUnauthenticated(VerifyRequest(codec_, "garbage", "session-1"), "malformed token");
  clock_->Advance(hours(2));
  ExpectUnauthenticated(VerifyRequest(codec_, *token, "session-1"), "token expired");
}

}  // namespace
}  // namespace omnirelay::auth
