#include "omnirelay/core/status.h"

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

namespace omnirelay::core {
namespace {

struct Row {
  StatusCode code;
  const char* name;
  int http;
};

// The documented table (docs/errors.md). If one of these changes, the docs must too.
constexpr Row kExpected[] = {
    {StatusCode::kOk, "OK", 200},
    {StatusCode::kCancelled, "CANCELLED", 499},
    {StatusCode::kUnknown, "UNKNOWN", 500},
    {StatusCode::kInvalidArgument, "INVALID_ARGUMENT", 400},
    {StatusCode::kDeadlineExceeded, "DEADLINE_EXCEEDED", 504},
    {StatusCode::kNotFound, "NOT_FOUND", 404},
    {StatusCode::kAlreadyExists, "ALREADY_EXISTS", 409},
    {StatusCode::kPermissionDenied, "PERMISSION_DENIED", 403},
    {StatusCode::kResourceExhausted, "RESOURCE_EXHAUSTED", 429},
    {StatusCode::kFailedPrecondition, "FAILED_PRECONDITION", 412},
    {StatusCode::kAborted, "ABORTED", 409},
    {StatusCode::kOutOfRange, "OUT_OF_RANGE", 400},
    {StatusCode::kUnimplemented, "UNIMPLEMENTED", 501},
    {StatusCode::kInternal, "INTERNAL", 500},
    {StatusCode::kUnavailable, "UNAVAILABLE", 503},
    {StatusCode::kDataLoss, "DATA_LOSS", 500},
    {StatusCode::kUnauthenticated, "UNAUTHENTICATED", 401},
};

TEST(StatusTest, CodesAreNumericallyGrpcCodes) {
  // gRPC's wire numbers; absl shares them, and our transports rely on that.
  EXPECT_EQ(static_cast<int>(StatusCode::kCancelled), 1);
  EXPECT_EQ(static_cast<int>(StatusCode::kDeadlineExceeded), 4);
  EXPECT_EQ(static_cast<int>(StatusCode::kResourceExhausted), 8);
  EXPECT_EQ(static_cast<int>(StatusCode::kUnavailable), 14);
  EXPECT_EQ(static_cast<int>(StatusCode::kUnauthenticated), 16);
}

TEST(StatusTest, HttpTableAndNames) {
  for (const Row& row : kExpected) {
    EXPECT_EQ(ToHttpStatus(row.code), row.http) << row.name;
    EXPECT_EQ(StatusCodeName(row.code), row.name);
    EXPECT_EQ(ParseStatusCodeName(row.name), row.code);
  }
}

TEST(StatusTest, DocsTableMatchesCode) {
  // docs/errors.md has a markdown row "| RESOURCE_EXHAUSTED | 8 | 429 | ..." per code.
  std::ifstream docs(OMNIRELAY_SOURCE_DIR "/docs/errors.md");
  ASSERT_TRUE(docs) << "docs/errors.md missing";
  std::stringstream text;
  text << docs.rdbuf();
  const std::string content = text.str();
  for (const Row& row : kExpected) {
    std::regex pattern("\\|\\s*`?" + std::string(row.name) + "`?\\s*\\|\\s*" +
                       std::to_string(static_cast<int>(row.code)) + "\\s*\\|\\s*" +
                       std::to_string(row.http) + "\\s*\\|");
    EXPECT_TRUE(std::regex_search(content, pattern)) << "docs/errors.md row for " << row.name;
  }
}

TEST(StatusTest, ParseAcceptsCamelCaseAndNumbers) {
  EXPECT_EQ(ParseStatusCodeName("ResourceExhausted"), StatusCode::kResourceExhausted);
  EXPECT_EQ(ParseStatusCodeName("deadline_exceeded"), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ParseStatusCodeName("14"), StatusCode::kUnavailable);
  EXPECT_EQ(ParseStatusCodeName("17"), std::nullopt);
  EXPECT_EQ(ParseStatusCodeName("Nope"), std::nullopt);
}

TEST(StatusTest, FromHttpStatusInvertsTheTableWhereUnambiguous) {
  EXPECT_EQ(FromHttpStatus(200), StatusCode::kOk);
  EXPECT_EQ(FromHttpStatus(400), StatusCode::kInvalidArgument);
  EXPECT_EQ(FromHttpStatus(401), StatusCode::kUnauthenticated);
  EXPECT_EQ(FromHttpStatus(403), StatusCode::kPermissionDenied);
  EXPECT_EQ(FromHttpStatus(404), StatusCode::kNotFound);
  EXPECT_EQ(FromHttpStatus(412), StatusCode::kFailedPrecondition);
  EXPECT_EQ(FromHttpStatus(429), StatusCode::kResourceExhausted);
  EXPECT_EQ(FromHttpStatus(499), StatusCode::kCancelled);
  EXPECT_EQ(FromHttpStatus(501), StatusCode::kUnimplemented);
  EXPECT_EQ(FromHttpStatus(503), StatusCode::kUnavailable);
  EXPECT_EQ(FromHttpStatus(504), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(FromHttpStatus(500), StatusCode::kInternal);
  EXPECT_EQ(FromHttpStatus(418), StatusCode::kInvalidArgument);
}

TEST(StatusTest, GrpcStatusFromHttpFollowsTheGrpcSpecTable) {
  EXPECT_EQ(GrpcStatusFromHttp(400), StatusCode::kInternal);
  EXPECT_EQ(GrpcStatusFromHttp(401), StatusCode::kUnauthenticated);
  EXPECT_EQ(GrpcStatusFromHttp(403), StatusCode::kPermissionDenied);
  EXPECT_EQ(GrpcStatusFromHttp(404), StatusCode::kUnimplemented);
  for (int status : {429, 502, 503, 504}) {
    EXPECT_EQ(GrpcStatusFromHttp(status), StatusCode::kUnavailable) << status;
  }
  for (int status : {200, 204, 302, 405, 408, 500, 501, 599}) {
    EXPECT_EQ(GrpcStatusFromHttp(status), StatusCode::kUnknown) << status;
  }
  // Not the inverse of the OmniRelay HTTP table.
  EXPECT_NE(GrpcStatusFromHttp(400), FromHttpStatus(400));
}

TEST(StatusTest, ErrorCodeTravelsWithTheStatus) {
  Status status =
      MakeStatus(StatusCode::kResourceExhausted, "all peers busy", "peer-pool-exhausted");
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "all peers busy");
  EXPECT_EQ(ErrorCode(status), "peer-pool-exhausted");
  Status copy = status;  // payload survives copies
  EXPECT_EQ(ErrorCode(copy), "peer-pool-exhausted");
  EXPECT_EQ(ErrorCode(MakeStatus(StatusCode::kInternal, "x")), std::nullopt);
  EXPECT_EQ(ErrorCode(WithErrorCode(absl::OkStatus(), "ignored")), std::nullopt);
}

TEST(StatusTest, ServerFailureClassification) {
  EXPECT_TRUE(IsServerFailure(StatusCode::kUnavailable));
  EXPECT_TRUE(IsServerFailure(StatusCode::kInternal));
  EXPECT_TRUE(IsServerFailure(StatusCode::kDataLoss));
  EXPECT_TRUE(IsServerFailure(StatusCode::kUnimplemented));
  EXPECT_TRUE(IsServerFailure(StatusCode::kResourceExhausted));
  EXPECT_TRUE(IsServerFailure(StatusCode::kDeadlineExceeded));
  EXPECT_FALSE(IsServerFailure(StatusCode::kInvalidArgument));
  EXPECT_FALSE(IsServerFailure(StatusCode::kPermissionDenied));
  EXPECT_FALSE(IsServerFailure(StatusCode::kUnauthenticated));
  EXPECT_FALSE(IsServerFailure(StatusCode::kNotFound));
  EXPECT_FALSE(IsServerFailure(StatusCode::kOk));
}

}  // namespace
}  // namespace omnirelay::core
