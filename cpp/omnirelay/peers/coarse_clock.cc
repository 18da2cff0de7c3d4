#include "omnirelay/peers/coarse_clock.h"

#include <pthread.h>

#include <condition_variable>
#include <ctime>
#include <mutex>
#include <new>
#include <thread>  // this_thread::sleep_for

namespace omnirelay::peers::internal {

CoarseClockState g_coarse_clock;

namespace {

std::int64_t RealNowNanos() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The ticker's parking place. Never destroyed (the detached ticker may run
// during static destruction); rebuilt in place in a forked child, where the
// parent's ticker does not exist and the mutex may have been held.
struct Ticker {
  std::mutex mu;
  std::condition_variable wake;
  bool running = false;  // a thread exists (parked or ticking); guarded by mu
};
Ticker* g_ticker = nullptr;

void* Run(void* arg) {
  auto* ticker = static_cast<Ticker*>(arg);
  pthread_setname_np(pthread_self(), "omnirelay-clock");
  int idle = 0;
  for (;;) {
    std::this_thread::sleep_for(kTickPeriod);
    g_coarse_clock.now_ns.store(RealNowNanos(), std::memory_order_relaxed);
    std::uint32_t mode = kTickingRead;
    if (g_coarse_clock.mode.compare_exchange_strong(mode, kTicking, std::memory_order_acq_rel)) {
      idle = 0;  // read since the last tick: keep going, and watch the next period
      continue;
    }
    if (++idle < kIdleTicks) continue;
    std::unique_lock lock(ticker->mu);
    mode = kTicking;
    if (!g_coarse_clock.mode.compare_exchange_strong(mode, kStopped, std::memory_order_acq_rel)) {
      idle = 0;  // a read arrived just now
      continue;
    }
    ticker->wake.wait(
        lock, [] { return g_coarse_clock.mode.load(std::memory_order_acquire) != kStopped; });
    idle = 0;
  }
}

Ticker& GetTicker() {
  static const bool initialised = [] {
    g_ticker = new Ticker();
    pthread_atfork(nullptr, nullptr, [] {
      // Only this thread exists in the child: no ticker, fresh primitives
      // (built over the old ones, whose mutex the parent's ticker may have
      // held; no allocation in a forked child).
      new (g_ticker) Ticker();
      g_coarse_clock.mode.store(kStopped, std::memory_order_relaxed);
    });
    return true;
  }();
  (void)initialised;
  return *g_ticker;
}

}  // namespace

std::int64_t CoarseNowNanosSlow() {
  std::uint32_t mode = g_coarse_clock.mode.load(std::memory_order_acquire);
  if (mode == kTicking) {
    // First read since the last tick: flag it so the ticker keeps running.
    if (g_coarse_clock.mode.compare_exchange_strong(mode, kTickingRead,
                                                    std::memory_order_acq_rel) ||
        mode == kTickingRead) {
      return g_coarse_clock.now_ns.load(std::memory_order_relaxed);
    }
    // It stopped in between: restart it below.
  } else if (mode == kTickingRead) {
    return g_coarse_clock.now_ns.load(std::memory_order_relaxed);
  }
  const std::int64_t now = RealNowNanos();
  Ticker& ticker = GetTicker();
  std::lock_guard lock(ticker.mu);
  if (g_coarse_clock.mode.load(std::memory_order_acquire) == kStopped) {
    g_coarse_clock.now_ns.store(now, std::memory_order_relaxed);
    g_coarse_clock.mode.store(kTickingRead, std::memory_order_release);
    if (ticker.running) {
      ticker.wake.notify_one();
    } else {
      // A detached pthread (no exception path): if it cannot be created, the
      // mode stays kStopped and every read reads the clock itself.
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
      pthread_t thread;
      ticker.running = pthread_create(&thread, &attr, &Run, &ticker) == 0;
      pthread_attr_destroy(&attr);
      if (!ticker.running) g_coarse_clock.mode.store(kStopped, std::memory_order_release);
    }
  }
  return now;
}

}  // namespace omnirelay::peers::internal
