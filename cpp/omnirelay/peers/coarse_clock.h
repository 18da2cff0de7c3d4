#pragma once
// A wall clock for timestamps that tolerate a few milliseconds of lag (a
// peer's last success/failure), read on every lease release without a clock
// call: one relaxed load of a time that a ticker thread refreshes every
// kTickPeriod.
//
// Why: even the vDSO's CLOCK_REALTIME_COARSE costs ~8 ns per call on the
// machines we measured (a fifth of the round-robin acquire+release budget);
// a load of a line every thread only reads costs ~1 ns.
//
// The ticker starts on first use and stops after kIdleTicks periods in which
// nobody read the time (an idle process does not wake up every few ms
// forever); the first read after that reads the clock itself and restarts it.
// So a read returns a time at most one period (plus the ticker's scheduling
// delay on a loaded machine) behind CLOCK_REALTIME, or the exact time.
//
// Thread-safety: CoarseNowNanos from any thread (atomics; the restart takes a
// mutex). Fork: the child starts without a ticker (pthread_atfork resets the
// state), so its first read restarts one.
#include <atomic>
#include <chrono>
#include <cstdint>

namespace omnirelay::peers::internal {

inline constexpr std::chrono::milliseconds kTickPeriod{2};
// 1 s without a read stops the ticker.
inline constexpr int kIdleTicks = 500;

struct alignas(64) CoarseClockState {
  // Nanoseconds since the epoch (CLOCK_REALTIME), as of the last tick.
  std::atomic<std::int64_t> now_ns{0};
  // kStopped, kTicking (nobody read since the last tick) or kTickingRead.
  std::atomic<std::uint32_t> mode{0};
};
inline constexpr std::uint32_t kStopped = 0;
inline constexpr std::uint32_t kTicking = 1;
inline constexpr std::uint32_t kTickingRead = 2;

extern CoarseClockState g_coarse_clock;

// Marks the time read (so the ticker keeps running), or restarts a stopped
// ticker and returns the clock's own reading.
std::int64_t CoarseNowNanosSlow();

inline std::int64_t CoarseNowNanos() {
  // Steady state: the ticker runs and someone already read since its last
  // tick, so this is a read of a line no reader writes.
  if (g_coarse_clock.mode.load(std::memory_order_acquire) == kTickingRead) {
    return g_coarse_clock.now_ns.load(std::memory_order_relaxed);
  }
  return CoarseNowNanosSlow();
}

}  // namespace omnirelay::peers::internal
