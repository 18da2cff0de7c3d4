#include "omnirelay/core/request_meta.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <ctime>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace omnirelay::core {

std::string Headers::Normalize(std::string_view name) {
  std::string out(name);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

void Headers::Set(std::string_view name, std::string value) {
  Remove(name);
  entries_.emplace_back(Normalize(name), std::move(value));
}

void Headers::Add(std::string_view name, std::string value) {
  entries_.emplace_back(Normalize(name), std::move(value));
}

std::optional<std::string_view> Headers::Get(std::string_view name) const {
  const std::string key = Normalize(name);
  for (const auto& [k, v] : entries_) {
    if (k == key) return std::string_view(v);
  }
  return std::nullopt;
}

bool Headers::Remove(std::string_view name) {
  const std::string key = Normalize(name);
  const auto before = entries_.size();
  std::erase_if(entries_, [&](const auto& entry) { return entry.first == key; });
  return entries_.size() != before;
}

std::optional<TimePoint> RequestMeta::EffectiveDeadline(TimePoint now) const {
  std::optional<TimePoint> result = deadline;
  if (time_to_live) {
    const TimePoint by_ttl = now + std::chrono::duration_cast<TimePoint::duration>(*time_to_live);
    if (!result || by_ttl < *result) result = by_ttl;
  }
  return result;
}

std::string FormatTimestamp(TimePoint time) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromChrono(time), absl::UTCTimeZone());
}

std::optional<TimePoint> ParseTimestamp(std::string_view text) {
  absl::Time parsed;
  std::string error;
  // %Ez accepts "+01:00" and "Z"; %E*S accepts fractional seconds.
  if (!absl::ParseTime("%Y-%m-%dT%H:%M:%E*S%Ez", std::string(text), &parsed, &error)) {
    return std::nullopt;
  }
  // Keep to what a nanosecond system_clock holds (years 1970..2200) so a
  // hostile timestamp cannot overflow deadline arithmetic.
  if (parsed < absl::UnixEpoch() || parsed > absl::FromUnixSeconds(7258118400)) return std::nullopt;
  return absl::ToChronoTime(parsed);
}

std::optional<Duration> ParseDuration(std::string_view text) {
  if (text.empty()) return std::nullopt;
  size_t unit_start = 0;
  while (unit_start < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[unit_start])) || text[unit_start] == '.')) {
    ++unit_start;
  }
  double value = 0;
  if (unit_start == 0 || !absl::SimpleAtod(std::string(text.substr(0, unit_start)), &value) ||
      value < 0) {
    return std::nullopt;
  }
  const std::string_view unit = text.substr(unit_start);
  double nanos_per_unit;
  if (unit.empty() || unit == "ms") {
    nanos_per_unit = 1e6;
  } else if (unit == "ns") {
    nanos_per_unit = 1;
  } else if (unit == "us") {
    nanos_per_unit = 1e3;
  } else if (unit == "s") {
    nanos_per_unit = 1e9;
  } else if (unit == "m") {
    nanos_per_unit = 60e9;
  } else if (unit == "h") {
    nanos_per_unit = 3600e9;
  } else {
    return std::nullopt;
  }
  const double nanos = value * nanos_per_unit;
  // At most ~100 years: larger values would overflow nanosecond arithmetic.
  if (!std::isfinite(nanos) || nanos > 3.2e18) return std::nullopt;
  return Duration(static_cast<Duration::rep>(std::llround(nanos)));
}

}  // namespace omnirelay::core
