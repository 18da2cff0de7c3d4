#include "omnirelay/core/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>

#include "omnirelay/core/request_meta.h"

namespace omnirelay::core {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};

struct LoggerHolder {
  std::mutex mu;
  std::shared_ptr<spdlog::logger> logger;
};

LoggerHolder& Holder() {
  static auto* holder = [] {
    auto* h = new LoggerHolder();
    h->logger = std::make_shared<spdlog::logger>("omnirelay",
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
    h->logger->set_pattern("%v");                // the JSON line is the whole message
    h->logger->set_level(spdlog::level::trace);  // filtering is ours (g_level)
    h->logger->flush_on(spdlog::level::trace);   // lines reach artifacts even on kill -9
    return h;
  }();
  return *holder;
}

std::shared_ptr<spdlog::logger> CurrentLogger() {
  auto& holder = Holder();
  std::lock_guard lock(holder.mu);
  return holder.logger;
}

}  // namespace

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
      return "trace";
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
    case LogLevel::kOff:
      return "off";
  }
  return "info";
}

std::optional<LogLevel> ParseLogLevel(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(LogLevel::kOff); ++i) {
    if (LogLevelName(static_cast<LogLevel>(i)) == name) return static_cast<LogLevel>(i);
  }
  if (name == "warning") return LogLevel::kWarn;
  return std::nullopt;
}

void SetLogLevel(LogLevel level) {
  g_level.store(static_cast<int>(level), std::memory_order_relaxed);
}
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }
bool LogEnabled(LogLevel level) {
  return level != LogLevel::kOff &&
         static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void SetLogFile(const std::string& path) {
  std::shared_ptr<spdlog::sinks::sink> sink;
  if (path.empty()) {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
  }
  auto logger = std::make_shared<spdlog::logger>("omnirelay", std::move(sink));
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::trace);
  logger->flush_on(spdlog::level::trace);
  auto& holder = Holder();
  std::lock_guard lock(holder.mu);
  holder.logger = std::move(logger);
}

std::string FormatLogLine(LogLevel level, std::string_view event, const nlohmann::json& fields,
                          std::string_view timestamp) {
  nlohmann::json line = {{"ts", timestamp}, {"level", LogLevelName(level)}, {"event", event}};
  if (fields.is_object()) {
    for (const auto& [key, value] : fields.items()) {
      if (!line.contains(key)) line[key] = value;
    }
  }
  // `replace` keeps a line valid JSON even if a field holds broken UTF-8.
  return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void Log(LogLevel level, std::string_view event, nlohmann::json fields) {
  if (!LogEnabled(level)) return;
  const std::string line =
      FormatLogLine(level, event, fields, FormatTimestamp(std::chrono::system_clock::now()));
  CurrentLogger()->log(spdlog::level::info, line);
}

}  // namespace omnirelay::core
