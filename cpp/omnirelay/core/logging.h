#pragma once
// Structured logging: one JSON object per line on stderr (or a file), e.g.
//   {"ts":"2026-11-23T09:00:00.123Z","level":"info","event":"node.started","node":"gw","port":8080}
// Built on spdlog (thread-safe sinks); the level can be changed at run time
// (admin endpoint, `--log-level`, Python `omnirelay.set_log_level`).
// Log() checks the level before building the JSON, so a disabled level costs
// one relaxed atomic load.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace omnirelay::core {

enum class LogLevel { kTrace = 0, kDebug, kInfo, kWarn, kError, kOff };

std::string_view LogLevelName(LogLevel level);
std::optional<LogLevel> ParseLogLevel(std::string_view name);

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
bool LogEnabled(LogLevel level);

// Sends subsequent log lines to `path` (appending), or back to stderr when empty.
void SetLogFile(const std::string& path);

void Log(LogLevel level, std::string_view event, nlohmann::json fields = nlohmann::json::object());

inline void LogInfo(std::string_view event, nlohmann::json fields = nlohmann::json::object()) {
  Log(LogLevel::kInfo, event, std::move(fields));
}
inline void LogWarn(std::string_view event, nlohmann::json fields = nlohmann::json::object()) {
  Log(LogLevel::kWarn, event, std::move(fields));
}
inline void LogError(std::string_view event, nlohmann::json fields = nlohmann::json::object()) {
  Log(LogLevel::kError, event, std::move(fields));
}

// Formats one log line (without newline); exposed for tests.
std::string FormatLogLine(LogLevel level, std::string_view event, const nlohmann::json& fields,
                          std::string_view timestamp);

}  // namespace omnirelay::core
