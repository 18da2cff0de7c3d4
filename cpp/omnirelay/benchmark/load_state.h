#pragma once
// State shared by the transport-specific load loops: the schedule (who sends
// what, when), the stop conditions and the results. All members are atomics
// or lock-free histograms; slots on any thread record into them directly.
// Internal to the benchmark subsystem.
#include <array>
#include <atomic>
#include <chrono>
#include <mutex>

#include "omnirelay/benchmark/load_generator.h"

namespace omnirelay::benchmark {

using SteadyClock = std::chrono::steady_clock;

class LoadState {
 public:
  explicit LoadState(const LoadOptions& options);
  // (Re)starts the schedule's clock; called once the transport is set up, so
  // channel creation does not count as the first request being late.
  void StartClock();

  // What a slot should do next.
  struct Ticket {
    bool stop = false;            // the run is over for this slot
    SteadyClock::time_point due;  // when to send (open loop); now for closed loop
    bool measured = false;        // counts toward the report (not warm-up)
  };
  Ticket Next();

  // Records a completed request that was due at `due`.
  void Record(const Ticket& ticket, absl::StatusCode code, std::string_view message);

  // The absolute deadline for a request sent now (earlier of --deadline,
  // now+--ttl and now+--timeout), if any.
  std::optional<core::TimePoint> RequestDeadline() const;

  bool Expired() const { return SteadyClock::now() >= end_; }
  SteadyClock::time_point end() const { return end_; }

  // Runs the progress reporter until `done` turns true.
  void ReportProgressUntil(const std::atomic<bool>& done);

  LoadReport BuildReport();

 private:
  const LoadOptions& options_;
  SteadyClock::time_point start_;
  SteadyClock::time_point measure_start_;
  SteadyClock::time_point end_;
  std::atomic<uint64_t> next_ticket_{0};
  std::atomic<uint64_t> measured_issued_{0};
  std::atomic<uint64_t> measured_done_{0};
  std::atomic<uint64_t> late_starts_{0};
  std::atomic<int64_t> last_completion_ns_{0};
  std::array<std::atomic<uint64_t>, 17> status_counts_{};
  core::LatencyHistogram success_latency_;
  core::LatencyHistogram failure_latency_;
  std::mutex sample_mu_;
  std::map<std::string, std::string> sample_errors_;
};

}  // namespace omnirelay::benchmark
