#pragma once
// Time for the whole core: one interface, a real clock and a manual clock.
//
// Everything that reads time or waits for it (deadlines, TTLs, breaker
// re-admission, heartbeat grace periods, coordinator waits) goes through a
// Clock so tests can drive it deterministically with ManualClock.
//
// Time points are wall-clock (system_clock) because deadlines cross process
// boundaries (`Rpc-Deadline`, `--deadline 2026-11-23T10:00:00Z`).
//
// Timers: ScheduleAt(when, fn) runs `fn` once when the clock reaches `when`.
//   * SystemClock runs callbacks on one lazily started timer thread; they must
//     be short and must not block (typically: set a flag, notify a condvar).
//   * ManualClock runs due callbacks synchronously inside Advance()/Set(), on
//     the advancing thread, in time order, without holding its own lock.
// Cancel(id) guarantees the callback will not start after Cancel returns, but
// a callback already running may still be finishing.
// Thread-safety: every method of both clocks is thread-safe.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace omnirelay::core {

using TimePoint = std::chrono::system_clock::time_point;
using Duration = std::chrono::nanoseconds;
using TimerId = std::uint64_t;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  virtual TimerId ScheduleAt(TimePoint when, std::function<void()> callback) = 0;
  TimerId ScheduleAfter(Duration delay, std::function<void()> callback) {
    return ScheduleAt(Now() + delay, std::move(callback));
  }
  // Returns true if the timer was pending and will now never run.
  virtual bool Cancel(TimerId id) = 0;
};

// Shared ordered timer table used by both clocks.
class TimerQueue {
 public:
  TimerId Add(TimePoint when, std::function<void()> callback);
  bool Remove(TimerId id);
  // Removes and returns the earliest callback due at or before `now`, if any.
  std::function<void()> PopDue(TimePoint now);
  std::optional<TimePoint> NextDue() const;
  size_t size() const { return by_id_.size(); }

 private:
  TimerId next_id_ = 1;
  std::multimap<TimePoint, std::pair<TimerId, std::function<void()>>> by_time_;
  std::map<TimerId, decltype(by_time_)::iterator> by_id_;
};

class SystemClock final : public Clock {
 public:
  SystemClock() = default;
  ~SystemClock() override;
  SystemClock(const SystemClock&) = delete;
  SystemClock& operator=(const SystemClock&) = delete;

  TimePoint Now() const override { return std::chrono::system_clock::now(); }
  TimerId ScheduleAt(TimePoint when, std::function<void()> callback) override;
  bool Cancel(TimerId id) override;

  // Process-wide instance for code that has no clock injected.
  static std::shared_ptr<SystemClock> Shared();

 private:
  void Run();
  std::mutex mu_;
  std::condition_variable cv_;
  TimerQueue timers_;
  std::thread thread_;
  bool stopping_ = false;
};

class ManualClock final : public Clock {
 public:
  explicit ManualClock(TimePoint start = TimePoint{} + std::chrono::hours(24 * 365 * 50))
      : now_(start) {}

  TimePoint Now() const override;
  TimerId ScheduleAt(TimePoint when, std::function<void()> callback) override;
  bool Cancel(TimerId id) override;

  // Moves time forward by `delta` and runs every timer that became due.
  void Advance(Duration delta);
  // Sets the time (never backwards) and runs every timer that became due.
  void Set(TimePoint now);
  size_t pending_timers() const;

 private:
  void RunDue();
  mutable std::mutex mu_;
  TimePoint now_;
  TimerQueue timers_;
};

}  // namespace omnirelay::core
