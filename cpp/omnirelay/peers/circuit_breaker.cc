#include "omnirelay/peers/circuit_breaker.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace omnirelay::peers {

std::string_view BreakerStateName(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

CircuitBreakerOptions CircuitBreakerOptions::ForTests() {
  CircuitBreakerOptions options;
  options.consecutive_failures = 3;
  options.base_open_delay = std::chrono::milliseconds(100);
  options.max_open_delay = std::chrono::milliseconds(800);
  return options;
}

namespace {
CircuitBreakerOptions Normalize(CircuitBreakerOptions options) {
  options.half_open_probes = std::max(options.half_open_probes, 1);
  options.ratio_window = std::max(options.ratio_window, 1);
  options.backoff_multiplier = std::max(options.backoff_multiplier, 1.0);
  return options;
}
}  // namespace

std::shared_ptr<CircuitBreaker> CircuitBreaker::Create(CircuitBreakerOptions options,
                                                       std::shared_ptr<core::Clock> clock,
                                                       Listener listener) {
  return std::shared_ptr<CircuitBreaker>(
      new CircuitBreaker(std::move(options), std::move(clock), std::move(listener)));
}

CircuitBreaker::CircuitBreaker(CircuitBreakerOptions options, std::shared_ptr<core::Clock> clock,
                               Listener listener)
    : ratio_rule_(Normalize(options).failure_ratio > 0),
      options_(Normalize(std::move(options))),
      clock_(std::move(clock)),
      listener_(std::move(listener)) {}

CircuitBreaker::~CircuitBreaker() {
  std::optional<core::TimerId> timer;
  {
    std::lock_guard lock(mu_);
    timer = timer_;
  }
  if (timer) clock_->Cancel(*timer);
}

CircuitBreaker::Admission CircuitBreaker::TryAdmit() {
  BreakerState state = state_.load(std::memory_order_acquire);
  if (state == BreakerState::kClosed) return Admission::kAdmitted;
  if (state == BreakerState::kOpen) return Admission::kRejected;
  std::lock_guard lock(mu_);
  if (state_.load(std::memory_order_relaxed) == BreakerState::kClosed) return Admission::kAdmitted;
  if (state_.load(std::memory_order_relaxed) != BreakerState::kHalfOpen) {
    return Admission::kRejected;
  }
  if (probes_in_flight_ >= options_.half_open_probes) return Admission::kRejected;
  ++probes_in_flight_;
  return Admission::kProbe;
}

void CircuitBreaker::ReturnProbe() {
  std::lock_guard lock(mu_);
  if (probes_in_flight_ > 0) --probes_in_flight_;
}

void CircuitBreaker::RecordOutcome(core::StatusCode code, bool probe) {
  const bool failure = code != core::StatusCode::kOk && core::IsServerFailure(code);
  // Fast path: a success on a closed breaker without a ratio rule only ends a
  // failure run; avoid even the store when there is no run (keeps the cache
  // line shared between threads).
  if (!failure && !probe && !ratio_rule_ &&
      state_.load(std::memory_order_acquire) == BreakerState::kClosed &&
      consecutive_failures_.load(std::memory_order_relaxed) == 0) {
    return;
  }
  std::optional<std::pair<BreakerState, BreakerState>> announce;
  {
    std::lock_guard lock(mu_);
    BreakerState state = state_.load(std::memory_order_relaxed);
    if (probe && probes_in_flight_ > 0) --probes_in_flight_;
    if (state == BreakerState::kHalfOpen) {
      if (!probe) return;  // only probes decide a half-open breaker
      if (failure) {
        OpenLocked();
      } else if (code == core::StatusCode::kOk) {
        consecutive_opens_ = 0;
        consecutive_failures_.store(0, std::memory_order_relaxed);
        TransitionLocked(BreakerState::kClosed);
      }
    } else if (state == BreakerState::kClosed && !failure && !probe && !ratio_rule_) {
      // A success ending a failure run (once per run: a peer's releases skip
      // the breaker again once the gate is clean).
      consecutive_failures_.store(0, std::memory_order_relaxed);
    } else if (state == BreakerState::kClosed) {
      int run = failure ? consecutive_failures_.load(std::memory_order_relaxed) + 1 : 0;
      consecutive_failures_.store(run, std::memory_order_relaxed);
      bool trip = options_.consecutive_failures > 0 && run >= options_.consecutive_failures;
      if (options_.failure_ratio > 0) {
        ++window_calls_;
        if (failure) ++window_failures_;
        if (window_calls_ >= options_.ratio_min_requests &&
            static_cast<double>(window_failures_) >=
                options_.failure_ratio * static_cast<double>(window_calls_)) {
          trip = true;
        }
        if (window_calls_ >= options_.ratio_window) window_calls_ = window_failures_ = 0;
      }
      if (trip) OpenLocked();
    }
    // kOpen: late outcomes of calls admitted before the breaker opened change nothing.
    PublishGateLocked();
    announce = std::exchange(pending_announce_, std::nullopt);
  }
  Announce(announce);
}

void CircuitBreaker::OpenLocked() {
  ++consecutive_opens_;
  double factor = std::pow(options_.backoff_multiplier, consecutive_opens_ - 1);
  double delay_ns = std::min(static_cast<double>(options_.base_open_delay.count()) * factor,
                             static_cast<double>(options_.max_open_delay.count()));
  auto delay = core::Duration(static_cast<core::Duration::rep>(delay_ns));
  reopen_at_ = clock_->Now() + delay;
  window_calls_ = window_failures_ = 0;
  probes_in_flight_ = 0;
  consecutive_failures_.store(0, std::memory_order_relaxed);
  TransitionLocked(BreakerState::kOpen);
  std::uint64_t generation = ++open_generation_;
  std::weak_ptr<CircuitBreaker> weak = weak_from_this();
  if (timer_) clock_->Cancel(*timer_);
  // ScheduleAt never runs the callback inline (ManualClock runs timers only in
  // Advance/Set), so scheduling under mu_ cannot deadlock.
  timer_ = clock_->ScheduleAt(*reopen_at_, [weak, generation] {
    if (auto self = weak.lock()) self->OnReopenTimer(generation);
  });
}

void CircuitBreaker::TransitionLocked(BreakerState to) {
  BreakerState from = state_.load(std::memory_order_relaxed);
  if (from == to) return;
  state_.store(to, std::memory_order_release);
  ++transitions_;
  if (to != BreakerState::kOpen) reopen_at_.reset();
  pending_announce_ = std::make_pair(from, to);
}

void CircuitBreaker::OnReopenTimer(std::uint64_t generation) {
  std::optional<std::pair<BreakerState, BreakerState>> announce;
  {
    std::lock_guard lock(mu_);
    if (generation != open_generation_ || state_.load() != BreakerState::kOpen) return;
    timer_.reset();
    probes_in_flight_ = 0;
    TransitionLocked(BreakerState::kHalfOpen);
    PublishGateLocked();
    announce = std::exchange(pending_announce_, std::nullopt);
  }
  Announce(announce);
}

void CircuitBreaker::Announce(std::optional<std::pair<BreakerState, BreakerState>> transition) {
  if (transition && listener_) listener_(transition->first, transition->second);
}

void CircuitBreaker::AttachGate(std::atomic<BreakerGate>* gate) {
  std::lock_guard lock(mu_);
  gate_ = gate;
  PublishGateLocked();
}

void CircuitBreaker::PublishGateLocked() {
  if (gate_ == nullptr) return;
  BreakerGate gate = BreakerGate::kClosedClean;
  switch (state_.load(std::memory_order_relaxed)) {
    case BreakerState::kClosed:
      gate = ratio_rule_ || consecutive_failures_.load(std::memory_order_relaxed) != 0
                 ? BreakerGate::kClosed
                 : BreakerGate::kClosedClean;
      break;
    case BreakerState::kHalfOpen:
      gate = BreakerGate::kHalfOpen;
      break;
    case BreakerState::kOpen:
      gate = BreakerGate::kOpen;
      break;
  }
  gate_->store(gate, std::memory_order_release);
}

BreakerSnapshot CircuitBreaker::Snapshot() const {
  std::lock_guard lock(mu_);
  BreakerSnapshot out;
  out.state = state_.load(std::memory_order_relaxed);
  out.consecutive_failures = consecutive_failures_.load(std::memory_order_relaxed);
  out.consecutive_opens = consecutive_opens_;
  out.probes_in_flight = probes_in_flight_;
  out.transitions = transitions_;
  out.reopen_at = reopen_at_;
  return out;
}

}  // namespace omnirelay::peers
