#include "omnirelay/peers/peer.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <utility>

#include "omnirelay/peers/coarse_clock.h"
#include "omnirelay/peers/peer_metrics.h"

namespace omnirelay::peers {
namespace {

std::int64_t ToNanos(core::TimePoint time) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch()).count();
}

std::optional<core::TimePoint> FromNanos(std::int64_t nanos) {
  if (nanos == 0) return std::nullopt;
  return core::TimePoint(
      std::chrono::duration_cast<core::TimePoint::duration>(std::chrono::nanoseconds(nanos)));
}

double ToMs(core::Duration duration) {
  return std::chrono::duration<double, std::milli>(duration).count();
}

}  // namespace

std::string_view PeerStatusName(PeerStatus status) {
  switch (status) {
    case PeerStatus::kUnknown:
      return "unknown";
    case PeerStatus::kAvailable:
      return "available";
    case PeerStatus::kUnavailable:
      return "unavailable";
  }
  return "unknown";
}

std::string_view AcquireResultName(AcquireResult result) {
  switch (result) {
    case AcquireResult::kAcquired:
      return "acquired";
    case AcquireResult::kBusy:
      return "busy";
    case AcquireResult::kUnhealthy:
      return "unhealthy";
    case AcquireResult::kCircuitOpen:
      return "circuit_open";
  }
  return "unknown";
}

bool PeerDescriptor::SupportsProtocol(std::string_view protocol) const {
  return std::find(protocols.begin(), protocols.end(), protocol) != protocols.end();
}

std::shared_ptr<Peer> Peer::Create(PeerDescriptor descriptor, PeerOptions options,
                                   std::shared_ptr<core::Clock> clock,
                                   std::shared_ptr<core::MetricsRegistry> metrics,
                                   core::Tags tags) {
  if (descriptor.id.empty()) descriptor.id = descriptor.endpoint;
  std::shared_ptr<Peer> peer(new Peer(std::move(descriptor), std::move(options), std::move(clock),
                                      std::move(metrics), std::move(tags)),
                             &Peer::Retire);
  peer->self_ = peer;
  if (peer->options_.breaker) {
    // The breaker outlives nothing: its timer holds a weak_ptr to it, and its
    // listener a weak_ptr to us, so a late timer never touches a dead peer.
    std::weak_ptr<Peer> weak = peer;
    peer->breaker_ = CircuitBreaker::Create(*peer->options_.breaker, peer->clock_,
                                            [weak](BreakerState from, BreakerState to) {
                                              if (auto self = weak.lock()) {
                                                self->OnBreakerTransition(from, to);
                                              }
                                            });
    peer->breaker_view_ = peer->breaker_.get();
    peer->breaker_->AttachGate(&peer->gate_);
  }
  return peer;
}

Peer::Peer(PeerDescriptor descriptor, PeerOptions options, std::shared_ptr<core::Clock> clock,
           std::shared_ptr<core::MetricsRegistry> metrics, core::Tags tags)
    : status_(descriptor.status),
      coarse_clock_(dynamic_cast<const core::SystemClock*>(clock.get()) != nullptr),
      max_inflight_(options.max_inflight),
      ewma_alpha_(options.ewma_alpha),
      descriptor_(std::move(descriptor)),
      options_(std::move(options)),
      clock_(std::move(clock)),
      metrics_(std::move(metrics)),
      tags_([&] {
        tags[kTagPeer] = descriptor_.id;
        return tags;
      }()) {
  if (metrics_) {
    // Read at scrape time from our own atomics: no metric work per lease.
    observed_[0] = metrics_->RegisterObservable(metric::kInflight, tags_,
                                                [this] { return static_cast<double>(inflight()); });
    observed_[1] = metrics_->RegisterObservable(metric::kSuccesses, tags_, [this] {
      return static_cast<double>(internal::SumSuccesses(stat_.id()));
    });
    observed_[2] = metrics_->RegisterObservable(metric::kFailures, tags_, [this] {
      return static_cast<double>(internal::SumFailures(stat_.id()));
    });
    observed_[3] = metrics_->RegisterObservableHistogram(
        metric::kLeaseDuration, tags_,
        [this](core::LatencyHistogram& out) { internal::MergeLatency(stat_.id(), out); });
    // Look every other series up once: Get* takes the registry mutex.
    auto with_reason = [&](const char* reason) {
      core::Tags tags = tags_;
      tags[kTagRejectionReason] = reason;
      return &metrics_->GetCounter(metric::kLeaseRejected, tags);
    };
    series_.rejected_busy = with_reason("busy");
    series_.rejected_unhealthy = with_reason("unhealthy");
    series_.rejected_circuit_open = with_reason("circuit_open");
  }
  // The hot members fill the first cache line (see peer.h).
  assert(reinterpret_cast<const char*>(&ewma_alpha_ + 1) - reinterpret_cast<const char*>(this) <=
         64);
}

Peer::~Peer() {
  // The breaker may outlive us for a moment (its re-open timer holds a strong
  // reference while it runs): stop it writing our gate first.
  if (breaker_) breaker_->AttachGate(nullptr);
}

void Peer::Retire(Peer* peer) {
  // Whoever brings the word to exactly kRetired (count 0) deletes: here when
  // no lease is out, else the last ReleaseLeaseSlot.
  const int old = peer->inflight_.fetch_or(kRetired, std::memory_order_acq_rel);
  if ((old & kInflightMask) == 0) delete peer;
}

bool Peer::ReleaseLeaseSlot(Peer* peer) {
  // seq_cst: pairs with the coordinator's waiter count so a waiter either sees
  // this slot free or is woken (see CoordinatorShared::OnRelease).
  const int old = peer->inflight_.fetch_sub(1, std::memory_order_seq_cst);
  if (old == (kRetired | 1)) {
    delete peer;
    return true;
  }
  return false;
}

void Peer::SetStatus(PeerStatus status) {
  if (status_.exchange(status, std::memory_order_acq_rel) != status) NotifyObserver();
}

void Peer::Refuse(AcquireResult result) {
  if (!metrics_) return;
  switch (result) {
    case AcquireResult::kBusy:
      series_.rejected_busy->Add(1);
      break;
    case AcquireResult::kUnhealthy:
      series_.rejected_unhealthy->Add(1);
      break;
    case AcquireResult::kCircuitOpen:
      series_.rejected_circuit_open->Add(1);
      break;
    case AcquireResult::kAcquired:
      break;
  }
}

Admission Peer::TryAcquireSlow() {
  Admission admission;
  if (status() == PeerStatus::kUnavailable || (health_view_ && !health_view_->eligible())) {
    admission.result = AcquireResult::kUnhealthy;
    Refuse(admission.result);
    return admission;
  }
  // Closed (either gate value) admits without the breaker's line; half-open
  // and open go to the breaker, which decides under its own rules (it may
  // have moved since the gate was read).
  if (breaker_view_ && gate_.load(std::memory_order_acquire) > BreakerGate::kClosed) {
    auto breaker_admission = breaker_view_->TryAdmit();
    if (breaker_admission == CircuitBreaker::Admission::kRejected) {
      admission.result = AcquireResult::kCircuitOpen;
      Refuse(admission.result);
      return admission;
    }
    admission.probe = breaker_admission == CircuitBreaker::Admission::kProbe;
  }
  if (max_inflight_ > 0) {
    // seq_cst: see CoordinatorShared::OnRelease (a plain load on x86).
    int current = inflight_.load(std::memory_order_seq_cst);
    do {
      if ((current & kInflightMask) >= max_inflight_) {
        if (admission.probe) breaker_view_->ReturnProbe();
        admission.probe = false;
        admission.result = AcquireResult::kBusy;
        Refuse(admission.result);
        return admission;
      }
    } while (!inflight_.compare_exchange_weak(current, current + 1, std::memory_order_acq_rel));
  } else {
    inflight_.fetch_add(1, std::memory_order_acq_rel);
  }
  admission.result = AcquireResult::kAcquired;
  return admission;
}

void Peer::Release(core::StatusCode outcome, core::Duration latency, bool probe) {
  RecordRelease(outcome, latency, probe);
  // The caller holds a shared_ptr, so this never deletes the peer.
  ReleaseLeaseSlot(this);
}

void Peer::RecordRelease(core::StatusCode outcome, core::Duration latency, bool probe) {
  const bool failure = outcome != core::StatusCode::kOk && core::IsServerFailure(outcome);
  RecordOutcome(outcome, failure, latency);
  // A non-failure that is not a probe changes nothing on a clean closed
  // breaker (BreakerGate::kClosedClean): skip the call and its cache line.
  if (breaker_view_ != nullptr &&
      (failure || probe || gate_.load(std::memory_order_acquire) != BreakerGate::kClosedClean)) {
    breaker_view_->RecordOutcome(outcome, probe);
  }
}

void Peer::RecordFeedback(core::StatusCode outcome, core::Duration rtt) {
  RecordOutcome(outcome, outcome != core::StatusCode::kOk && core::IsServerFailure(outcome), rtt);
  if (breaker_) breaker_->RecordOutcome(outcome, false);
}

void Peer::RecordOutcome(core::StatusCode outcome, bool failure, core::Duration latency) {
  internal::StatCell& cell = internal::ThreadCell(stat_.id());
  if (outcome == core::StatusCode::kOk) {
    internal::Bump(cell.successes);
    // Store only when the (coarse) time moved: the line stays shared-clean
    // across cores while many releases land in the same tick.
    const std::int64_t now = NowNanos();
    if (last_success_ns_.load(std::memory_order_relaxed) != now) {
      last_success_ns_.store(now, std::memory_order_relaxed);
    }
  } else if (failure) {
    internal::Bump(cell.failures);
    last_failure_ns_.store(NowNanos(), std::memory_order_relaxed);
  }
  if (latency.count() <= 0) return;  // no measurement (cancelled lease, synthetic release)
  const double sample = ToMs(latency);
  // lease.duration, in this thread's cell (same ticks as a registry histogram).
  // Integer rounding to microsecond ticks, the same value Record()'s llround
  // of ms x 1000 gives, without the libm call.
  const auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(latency).count();
  internal::RecordLatency(cell, static_cast<std::uint64_t>((nanos + 500) / 1000));
  // The EWMA and the window are estimates, updated with plain load + store
  // rather than a locked RMW: two releases racing may drop one sample from
  // the average, or write the same window slot, which an estimate tolerates.
  // A sample equal to the average leaves it unchanged: skip the write (and
  // the cache-line transfer) altogether.
  const double old = ewma_ms_.load(std::memory_order_relaxed);
  const double next = old < 0 ? sample : old + ewma_alpha_ * (sample - old);
  if (next != old) ewma_ms_.store(next, std::memory_order_relaxed);
  const std::uint32_t index = window_next_.load(std::memory_order_relaxed);
  window_next_.store(index + 1, std::memory_order_relaxed);
  window_[index % kLatencyWindow].store(static_cast<float>(sample), std::memory_order_relaxed);
}

std::int64_t Peer::NowNanos() const {
  // The same epoch as system_clock, a few ms behind at most (coarse_clock.h).
  if (coarse_clock_) return internal::CoarseNowNanos();
  return ToNanos(clock_->Now());
}

std::optional<double> Peer::LatencyEwmaMs() const {
  double value = ewma_ms_.load(std::memory_order_relaxed);
  if (value < 0) return std::nullopt;
  return value;
}

std::uint64_t Peer::SuccessCount() const { return internal::SumSuccesses(stat_.id()); }
std::uint64_t Peer::FailureCount() const { return internal::SumFailures(stat_.id()); }

LatencyPercentiles Peer::WindowPercentiles() const {
  std::uint32_t count = std::min(window_next_.load(std::memory_order_relaxed), kLatencyWindow);
  std::vector<float> samples(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    samples[i] = window_[i].load(std::memory_order_relaxed);
  }
  std::sort(samples.begin(), samples.end());
  LatencyPercentiles out;
  out.samples = count;
  if (count == 0) return out;
  // Nearest-rank percentile: the smallest sample with at least q of the window at or below it.
  auto rank = [&](double q) {
    auto index = static_cast<std::size_t>(std::ceil(q * count));
    return static_cast<double>(samples[std::clamp<std::size_t>(index, 1, count) - 1]);
  };
  out.p50_ms = rank(0.50);
  out.p90_ms = rank(0.90);
  out.p99_ms = rank(0.99);
  return out;
}

PeerState Peer::Snapshot() const {
  PeerState state;
  state.descriptor = descriptor_;
  state.status = status();
  state.eligible = IsEligible();
  state.health_eligible = !health_ || health_->eligible();
  state.inflight = inflight();
  state.max_inflight = max_inflight_;
  state.successes = internal::SumSuccesses(stat_.id());
  state.failures = internal::SumFailures(stat_.id());
  state.last_success = FromNanos(last_success_ns_.load(std::memory_order_relaxed));
  state.last_failure = FromNanos(last_failure_ns_.load(std::memory_order_relaxed));
  state.latency_ewma_ms = LatencyEwmaMs();
  state.latency = WindowPercentiles();
  if (breaker_) state.breaker = breaker_->Snapshot();
  return state;
}

void Peer::SetHealthHandle(std::shared_ptr<const PeerHealthHandle> handle) {
  health_ = std::move(handle);
  health_view_ = health_.get();
}

void Peer::SetObserver(Observer observer) {
  auto shared = observer ? std::make_shared<const Observer>(std::move(observer)) : nullptr;
  std::lock_guard lock(observer_mu_);
  observer_ = std::move(shared);
}

void Peer::NotifyObserver() {
  std::shared_ptr<const Observer> observer;
  {
    std::lock_guard lock(observer_mu_);
    observer = observer_;
  }
  if (observer) (*observer)(*this);
}

void Peer::OnBreakerTransition(BreakerState from, BreakerState to) {
  if (metrics_) {
    core::Tags tags = tags_;
    tags[kTagBreakerFrom] = std::string(BreakerStateName(from));
    tags[kTagBreakerTo] = std::string(BreakerStateName(to));
    metrics_->GetCounter(metric::kBreakerTransitions, tags).Add(1);
  }
  NotifyObserver();
}

}  // namespace omnirelay::peers
