#include "omnirelay/benchmark/load_state.h"

#include <cmath>
#include <cstdio>
#include <thread>

namespace omnirelay::benchmark {

namespace {
constexpr auto kForever = std::chrono::hours(24 * 365);
}

LoadState::LoadState(const LoadOptions& options) : options_(options) { StartClock(); }

void LoadState::StartClock() {
  start_ = SteadyClock::now();
  measure_start_ = start_ + std::chrono::duration_cast<SteadyClock::duration>(options_.warmup);
  end_ =
      options_.duration
          ? measure_start_ + std::chrono::duration_cast<SteadyClock::duration>(*options_.duration)
          : measure_start_ + kForever;
}

LoadState::Ticket LoadState::Next() {
  Ticket ticket;
  const auto now = SteadyClock::now();
  if (options_.rps > 0) {
    const uint64_t index = next_ticket_.fetch_add(1, std::memory_order_relaxed);
    ticket.due = start_ + std::chrono::duration_cast<SteadyClock::duration>(
                              std::chrono::duration<double>(index / options_.rps));
    if (ticket.due + std::chrono::milliseconds(1) < now) {
      late_starts_.fetch_add(1, std::memory_order_relaxed);
    }
  } else {
    ticket.due = now;
  }
  if (ticket.due >= end_) {
    ticket.stop = true;
    return ticket;
  }
  ticket.measured = ticket.due >= measure_start_;
  if (ticket.measured && options_.requests) {
    if (measured_issued_.fetch_add(1, std::memory_order_relaxed) >= *options_.requests) {
      ticket.stop = true;
    }
  }
  return ticket;
}

void LoadState::Record(const Ticket& ticket, absl::StatusCode code, std::string_view message) {
  if (!ticket.measured) return;
  const auto now = SteadyClock::now();
  const double latency_ms = std::chrono::duration<double, std::milli>(now - ticket.due).count();
  const auto index =
      static_cast<size_t>(code) < status_counts_.size() ? static_cast<size_t>(code) : 2;  // UNKNOWN
  status_counts_[index].fetch_add(1, std::memory_order_relaxed);
  if (code == absl::StatusCode::kOk) {
    success_latency_.Record(latency_ms);
  } else {
    failure_latency_.Record(latency_ms);
    const std::string name(core::StatusCodeName(code));
    std::lock_guard lock(sample_mu_);  // failures only: not on the success path
    sample_errors_.try_emplace(name, std::string(message.substr(0, 200)));
  }
  measured_done_.fetch_add(1, std::memory_order_relaxed);
  last_completion_ns_.store((now - measure_start_).count(), std::memory_order_relaxed);
}

std::optional<core::TimePoint> LoadState::RequestDeadline() const {
  const auto now = std::chrono::system_clock::now();
  std::optional<core::TimePoint> deadline = options_.deadline;
  auto earlier = [&](core::TimePoint candidate) {
    if (!deadline || candidate < *deadline) deadline = candidate;
  };
  if (options_.ttl)
    earlier(now + std::chrono::duration_cast<core::TimePoint::duration>(*options_.ttl));
  if (options_.timeout.count() > 0) {
    earlier(now + std::chrono::duration_cast<core::TimePoint::duration>(options_.timeout));
  }
  return deadline;
}

void LoadState::ReportProgressUntil(const std::atomic<bool>& done) {
  auto next = SteadyClock::now() + std::chrono::seconds(1);
  uint64_t previous = 0;
  while (!done.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (SteadyClock::now() < next || !options_.on_progress) continue;
    next += std::chrono::seconds(1);
    const uint64_t completed = measured_done_.load();
    const uint64_t ok = status_counts_[0].load();
    const double elapsed = std::chrono::duration<double>(SteadyClock::now() - start_).count();
    char line[256];
    std::snprintf(line, sizeof(line),
                  "[%6.1fs]%s %llu done  %llu/s  ok %llu  err %llu  p50 %.2fms  p99 %.2fms",
                  elapsed, SteadyClock::now() < measure_start_ ? " warm-up" : "",
                  static_cast<unsigned long long>(completed),
                  static_cast<unsigned long long>(completed - previous),
                  static_cast<unsigned long long>(ok),
                  static_cast<unsigned long long>(completed - ok), success_latency_.Percentile(0.5),
                  success_latency_.Percentile(0.99));
    previous = completed;
    options_.on_progress(line);
  }
}

LoadReport LoadState::BuildReport() {
  LoadReport report;
  for (size_t code = 0; code < status_counts_.size(); ++code) {
    const uint64_t count = status_counts_[code].load();
    if (count == 0) continue;
    report.status_counts[std::string(core::StatusCodeName(static_cast<absl::StatusCode>(code)))] =
        count;
    report.requests += count;
    if (code == 0) {
      report.successes = count;
    } else {
      report.failures += count;
    }
  }
  report.late_starts = late_starts_.load();
  // Throughput over the measured window: the whole --duration, unless the
  // run was cut short by --requests, then up to the last completion.
  const bool stopped_by_count = options_.requests && measured_issued_.load() >= *options_.requests;
  double window_s =
      std::chrono::duration<double>(SteadyClock::duration(last_completion_ns_.load())).count();
  if (options_.duration && !stopped_by_count) {
    window_s = std::chrono::duration<double>(*options_.duration).count();
  }
  report.duration_s = window_s;
  report.throughput_rps = window_s > 0 ? static_cast<double>(report.requests) / window_s : 0;
  report.success_latency_ms = success_latency_.Summarize();
  report.failure_latency_ms = failure_latency_.Summarize();
  {
    std::lock_guard lock(sample_mu_);
    report.sample_errors = sample_errors_;
  }
  return report;
}

}  // namespace omnirelay::benchmark
