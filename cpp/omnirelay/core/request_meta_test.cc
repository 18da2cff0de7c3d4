#include "omnirelay/core/request_meta.h"

#include <gtest/gtest.h>

namespace omnirelay::core {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(HeadersTest, NamesAreCaseInsensitive) {
  Headers headers;
  headers.Set("Session-Id", "abc");
  EXPECT_EQ(headers.Get("session-id"), "abc");
  EXPECT_EQ(headers.Get("SESSION-ID"), "abc");
  headers.Set("SESSION-id", "def");
  EXPECT_EQ(headers.size(), 1u);
  EXPECT_EQ(headers.Get("session-id"), "def");
  headers.Add("x-multi", "1");
  headers.Add("X-Multi", "2");
  EXPECT_EQ(headers.size(), 3u);
  EXPECT_EQ(headers.Get("x-multi"), "1");
  EXPECT_TRUE(headers.Remove("X-MULTI"));
  EXPECT_FALSE(headers.Contains("x-multi"));
  EXPECT_FALSE(headers.Get("missing").has_value());
}

TEST(RequestMetaTest, NoDeadlineWithoutTtlOrDeadline) {
  ManualClock clock;
  RequestMeta meta;
  EXPECT_EQ(meta.EffectiveDeadline(clock.Now()), std::nullopt);
}

TEST(RequestMetaTest, TtlAloneIsRelativeToNow) {
  ManualClock clock;
  RequestMeta meta;
  meta.time_to_live = milliseconds(50);
  const TimePoint start = clock.Now();
  EXPECT_EQ(meta.EffectiveDeadline(clock.Now()), start + milliseconds(50));
  clock.Advance(seconds(1));
  EXPECT_EQ(meta.EffectiveDeadline(clock.Now()), start + seconds(1) + milliseconds(50));
}

TEST(RequestMetaTest, DeadlineAloneIsAbsolute) {
  ManualClock clock;
  RequestMeta meta;
  meta.deadline = clock.Now() + seconds(3);
  clock.Advance(seconds(1));
  EXPECT_EQ(meta.EffectiveDeadline(clock.Now()), *meta.deadline);
}

TEST(RequestMetaTest, EarlierOfDeadlineAndTtlWins) {
  ManualClock clock;
  const TimePoint now = clock.Now();
  RequestMeta meta;
  meta.deadline = now + seconds(2);
  meta.time_to_live = seconds(5);
  EXPECT_EQ(meta.EffectiveDeadline(now), now + seconds(2));  // deadline earlier
  meta.time_to_live = milliseconds(500);
  EXPECT_EQ(meta.EffectiveDeadline(now), now + milliseconds(500));  // TTL earlier
  clock.Advance(seconds(3));  // deadline already past: stays the (past) deadline
  EXPECT_EQ(meta.EffectiveDeadline(clock.Now()), now + seconds(2));
  EXPECT_LT(*meta.EffectiveDeadline(clock.Now()), clock.Now());
}

TEST(TimestampTest, RoundTripsAndAcceptsOffsets) {
  auto parsed = ParseTimestamp("2026-11-23T10:00:00.250Z");
  ASSERT_TRUE(parsed);
  EXPECT_EQ(FormatTimestamp(*parsed), "2026-11-23T10:00:00.250Z");
  auto offset = ParseTimestamp("2026-11-23T11:00:00+01:00");
  ASSERT_TRUE(offset);
  EXPECT_EQ(FormatTimestamp(*offset), "2026-11-23T10:00:00.000Z");
  EXPECT_FALSE(ParseTimestamp("yesterday"));
  EXPECT_FALSE(ParseTimestamp("2026-11-23"));
}

TEST(DurationTest, ParsesUnits) {
  EXPECT_EQ(ParseDuration("50ms"), milliseconds(50));
  EXPECT_EQ(ParseDuration("1.5s"), milliseconds(1500));
  EXPECT_EQ(ParseDuration("10m"), seconds(600));
  EXPECT_EQ(ParseDuration("1h"), seconds(3600));
  EXPECT_EQ(ParseDuration("250us"), std::chrono::microseconds(250));
  EXPECT_EQ(ParseDuration("20"), milliseconds(20));
  EXPECT_FALSE(ParseDuration(""));
  EXPECT_FALSE(ParseDuration("-5ms"));
  EXPECT_FALSE(ParseDuration("5 parsecs"));
  EXPECT_FALSE(ParseDuration("ms"));
  // Hostile input: no overflow, no NaN, no trailing garbage.
  EXPECT_FALSE(ParseDuration("nan"));
  EXPECT_FALSE(ParseDuration("nanms"));
  EXPECT_FALSE(ParseDuration("99999999999999999999h"));
  EXPECT_FALSE(ParseDuration("1e9h"));
  EXPECT_FALSE(ParseDuration("5msx"));
  EXPECT_FALSE(ParseDuration("1..5s"));
  EXPECT_FALSE(ParseTimestamp("2026-11-23T10:00:00Zjunk"));
  EXPECT_FALSE(ParseTimestamp("99999-11-23T10:00:00Z"));
}

}  // namespace
}  // namespace omnirelay::core
