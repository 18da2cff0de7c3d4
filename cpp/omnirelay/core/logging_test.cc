#include "omnirelay/core/logging.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace omnirelay::core {
namespace {

TEST(LoggingTest, FormatsOneJsonObjectPerLine) {
  const std::string line = FormatLogLine(LogLevel::kWarn, "peer.lease_rejected",
                                         {{"peer", "b1"}, {"reason", "busy"}, {"level", "ignored"}},
                                         "2026-11-23T10:00:00.000Z");
  const auto parsed = nlohmann::json::parse(line);
  EXPECT_EQ(parsed["ts"], "2026-11-23T10:00:00.000Z");
  EXPECT_EQ(parsed["level"], "warn");  // reserved keys are not overwritten by fields
  EXPECT_EQ(parsed["event"], "peer.lease_rejected");
  EXPECT_EQ(parsed["peer"], "b1");
  EXPECT_EQ(line.find('\n'), std::string::npos);
}

TEST(LoggingTest, LevelIsAdjustableAtRunTime) {
  const std::string path = ::testing::TempDir() + "/omnirelay_logging_test.log";
  std::remove(path.c_str());
  SetLogFile(path);
  SetLogLevel(LogLevel::kWarn);
  LogInfo("hidden");
  LogWarn("shown.warn", {{"n", 1}});
  SetLogLevel(LogLevel::kDebug);
  Log(LogLevel::kDebug, "shown.debug");
  SetLogLevel(LogLevel::kInfo);
  SetLogFile("");

  std::ifstream in(path);
  std::string first, second, third;
  ASSERT_TRUE(std::getline(in, first));
  ASSERT_TRUE(std::getline(in, second));
  EXPECT_FALSE(std::getline(in, third));
  EXPECT_EQ(nlohmann::json::parse(first)["event"], "shown.warn");
  EXPECT_EQ(nlohmann::json::parse(first)["n"], 1);
  EXPECT_EQ(nlohmann::json::parse(second)["event"], "shown.debug");
}

TEST(LoggingTest, ParsesLevelNames) {
  EXPECT_EQ(ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(ParseLogLevel("warning"), LogLevel::kWarn);
  EXPECT_EQ(ParseLogLevel("loud"), std::nullopt);
}

}  // namespace
}  // namespace omnirelay::core
