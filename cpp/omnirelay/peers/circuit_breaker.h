#pragma once
// Per-peer circuit breaker: closed -> open -> half-open -> closed.
//
//   closed    admits everything. Trips to open after `consecutive_failures`
//             server failures in a row, or when the failure ratio of a
//             tumbling window of `ratio_window` outcomes (at least
//             `ratio_min_requests`) reaches `failure_ratio`.
//   open      admits nothing for delay(k) = min(base_open_delay *
//             backoff_multiplier^(k-1), max_open_delay), k = opens since the
//             breaker last closed. A Clock timer then moves it to half-open
//             *by itself*: a peer is re-admitted even when no request touches
//             it (otherwise an idle open peer would stay open forever and the
//             coordinator would never see it become available again).
//   half-open admits at most `half_open_probes` concurrent probe requests. A
//             probe that succeeds closes the breaker (k resets); a probe that
//             fails re-opens it with the next, longer delay.
//
// Only server failures (core::IsServerFailure: Unavailable, Internal,
// DataLoss, Unimplemented, ResourceExhausted, DeadlineExceeded, Unknown) count
// as failures. Client errors (InvalidArgument, NotFound, ...) prove the peer
// answered, so they reset the consecutive-failure run in closed state but do
// not decide a half-open probe (its slot is simply returned).
//
// Thread-safety: every method is thread-safe. TryAdmit in closed state and a
// success in closed state (ratio disabled) are single atomic operations; every
// other path takes a small mutex (failures and transitions are rare). The
// listener runs outside the mutex, on the thread that caused the transition
// (for re-admission: the clock's timer thread, or ManualClock::Advance's
// caller) and must not block.
// Ownership: always held by shared_ptr (Create); pending timers hold only a
// weak_ptr and are cancelled by the destructor.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/status.h"

namespace omnirelay::peers {

enum class BreakerState : std::uint8_t { kClosed = 0, kOpen = 1, kHalfOpen = 2 };
std::string_view BreakerStateName(BreakerState state);  // "closed", "open", "half_open"

// What a lease's hot path needs from a breaker, mirrored into a byte its owner
// keeps beside its own hot fields (Peer's first cache line; see AttachGate),
// so acquiring and releasing on a healthy peer never reads the breaker's line.
enum class BreakerGate : std::uint8_t {
  kClosedClean = 0,  // closed, no failure run, no ratio rule: a non-failure
                     // outcome that is not a probe changes nothing (skip it)
  kClosed = 1,       // closed: admits; every outcome must be reported
  kHalfOpen = 2,     // TryAdmit decides (probe slots)
  kOpen = 3,         // rejects
};

struct CircuitBreakerOptions {
  // Server failures in a row that open the breaker; 0 disables the rule.
  int consecutive_failures = 5;
  // Failure ratio in [0, 1] over a tumbling window that opens it; 0 disables.
  double failure_ratio = 0;
  int ratio_window = 20;
  int ratio_min_requests = 10;
  core::Duration base_open_delay = std::chrono::seconds(1);
  core::Duration max_open_delay = std::chrono::seconds(60);
  double backoff_multiplier = 2.0;
  int half_open_probes = 1;

  // Profile for tests: trips after 3 failures, 100ms first delay.
  static CircuitBreakerOptions ForTests();
};

struct BreakerSnapshot {
  BreakerState state = BreakerState::kClosed;
  int consecutive_failures = 0;
  int consecutive_opens = 0;  // k of the delay formula
  int probes_in_flight = 0;
  std::uint64_t transitions = 0;
  std::optional<core::TimePoint> reopen_at;  // when an open breaker goes half-open
};

// Cache-line aligned so its hot members (below) sit in one line.
class alignas(64) CircuitBreaker : public std::enable_shared_from_this<CircuitBreaker> {
 public:
  using Listener = std::function<void(BreakerState from, BreakerState to)>;
  enum class Admission : std::uint8_t { kAdmitted, kProbe, kRejected };

  static std::shared_ptr<CircuitBreaker> Create(CircuitBreakerOptions options,
                                                std::shared_ptr<core::Clock> clock,
                                                Listener listener = nullptr);
  ~CircuitBreaker();
  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  BreakerState state() const { return state_.load(std::memory_order_acquire); }

  // kAdmitted (closed), kProbe (half-open, a probe slot was taken: report the
  // outcome with probe=true or give it back with ReturnProbe), kRejected.
  Admission TryAdmit();
  void ReturnProbe();
  // Reports a finished call. `probe` says whether TryAdmit returned kProbe.
  void RecordOutcome(core::StatusCode code, bool probe);

  // Mirrors the breaker's state into `gate` from now on (nullptr detaches).
  // Every write of the mirror happens under the breaker's mutex together with
  // the change it reflects, so it never lags; after AttachGate(nullptr)
  // returns the breaker never writes the old byte again (the owner may free it).
  void AttachGate(std::atomic<BreakerGate>* gate);

  BreakerSnapshot Snapshot() const;
  const CircuitBreakerOptions& options() const { return options_; }

 private:
  CircuitBreaker(CircuitBreakerOptions options, std::shared_ptr<core::Clock> clock,
                 Listener listener);
  // Both require mu_; return the transition to announce once mu_ is released.
  void OpenLocked();
  void TransitionLocked(BreakerState to);
  void OnReopenTimer(std::uint64_t generation);
  void Announce(std::optional<std::pair<BreakerState, BreakerState>> transition);
  // Requires mu_: writes the gate from state_, the failure run and the ratio rule.
  void PublishGateLocked();

  // Hot first: what every admission and release reads (state, the failure
  // run, whether a ratio rule applies) shares one cache line, so a release on
  // a cold peer (1,000 peers do not stay in cache) misses once here, not twice.
  std::atomic<BreakerState> state_{BreakerState::kClosed};
  std::atomic<int> consecutive_failures_{0};
  const bool ratio_rule_;  // options_.failure_ratio > 0

  const CircuitBreakerOptions options_;
  const std::shared_ptr<core::Clock> clock_;
  const Listener listener_;

  mutable std::mutex mu_;
  int window_calls_ = 0;
  int window_failures_ = 0;
  int consecutive_opens_ = 0;
  int probes_in_flight_ = 0;
  std::uint64_t transitions_ = 0;
  std::uint64_t open_generation_ = 0;
  std::optional<core::TimePoint> reopen_at_;
  std::optional<core::TimerId> timer_;
  std::optional<std::pair<BreakerState, BreakerState>> pending_announce_;
  std::atomic<BreakerGate>* gate_ = nullptr;  // guarded by mu_
};

}  // namespace omnirelay::peers
