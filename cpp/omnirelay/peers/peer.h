#pragma once
// The peer model: a transport-neutral descriptor plus the live state the
// choosers and the coordinator read on every pick.
//
//   PeerDescriptor  what a peer is (id, endpoint URI, role, region/zone,
//                   labels, protocol hints such as "h3"), as built from
//                   configuration or a gossip/leadership snapshot.
//   Peer            live state: status, in-flight count with an optional cap,
//                   circuit breaker, health-tracker handle, last success and
//                   failure, latency EWMA and a window of recent latencies.
//
// Acquire/release protocol: TryAcquire() either takes one in-flight slot
// (result kAcquired, `probe` set when the breaker is half-open) or refuses
// with the reason (kBusy at the cap, kUnhealthy when Unavailable or the health
// tracker says ineligible, kCircuitOpen); every refusal is counted in
// omnirelay.peer.lease_rejected. Release(outcome, latency, probe) gives the
// slot back and feeds the breaker, the latency statistics and the metrics.
// RecordFeedback() feeds RTT/outcomes of calls that did not go through a
// lease (control-plane pings, gossip probes).
//
// Thread-safety: all methods are thread-safe. TryAcquire/Release are
// lock-free (atomics) unless the breaker is half-open or records a failure.
// Metrics: omnirelay.peer.inflight, .successes, .failures and lease.duration
// are observable series (core::MetricsRegistry::RegisterObservable /
// RegisterObservableHistogram) read at scrape time: in-flight from this
// peer's atomic, successes/failures/latencies from per-thread cells
// (peer_stats.h) that a release writes without a locked instruction.
// last_success/last_failure come from a ticker-refreshed clock (a few ms
// behind at most, coarse_clock.h) when the clock is the SystemClock.
// The breaker's state is mirrored into this peer's hot line (gate_), so a
// pick, an admission and a success on a closed breaker with no failure run
// never touch the breaker (docs/peers.md, Threading).
// SetHealthHandle and SetOwner must be called before the peer is shared with
// other threads.
// Ownership: held by shared_ptr; a peer belongs to at most one coordinator.
// A leased peer outlives its last shared_ptr: the in-flight count doubles as
// the leases' reference (a lease holds no shared_ptr, see coordinator.h), so
// the object is deleted by whichever comes last, the last shared_ptr or the
// last lease release (ReleaseLeaseSlot).
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/core/status.h"
#include "omnirelay/peers/circuit_breaker.h"
#include "omnirelay/peers/health_tracker.h"
#include "omnirelay/peers/peer_stats.h"

namespace omnirelay::peers {

enum class PeerStatus : std::uint8_t { kUnknown = 0, kAvailable = 1, kUnavailable = 2 };
std::string_view PeerStatusName(PeerStatus status);  // "unknown", "available", "unavailable"

struct PeerDescriptor {
  std::string id;        // unique within a list; defaults to the endpoint
  std::string endpoint;  // URI, e.g. "grpc://10.0.0.7:9090" or "https://analytics-1:8443"
  std::string role;      // e.g. "leader", "replica", "gateway"
  std::string region;
  std::string zone;
  std::map<std::string, std::string> labels;
  std::vector<std::string> protocols;        // hints: "http1", "h2", "h3", "grpc"
  PeerStatus status = PeerStatus::kUnknown;  // initial health state

  bool SupportsProtocol(std::string_view protocol) const;
  bool SupportsHttp3() const { return SupportsProtocol("h3") || SupportsProtocol("http3"); }
};

struct PeerOptions {
  // Concurrent leases the peer accepts; 0 = unlimited. At the cap it is busy.
  int max_inflight = 0;
  // Breaker settings; nullopt disables the breaker for this peer.
  std::optional<CircuitBreakerOptions> breaker = CircuitBreakerOptions{};
  // Weight of a new latency sample in the EWMA (0 < alpha <= 1).
  double ewma_alpha = 0.3;
};

enum class AcquireResult : std::uint8_t { kAcquired, kBusy, kUnhealthy, kCircuitOpen };
std::string_view AcquireResultName(AcquireResult result);  // "acquired", "busy", ...

struct Admission {
  AcquireResult result = AcquireResult::kBusy;
  bool probe = false;  // a half-open breaker probe: pass it back to Release
  bool ok() const { return result == AcquireResult::kAcquired; }
};

struct LatencyPercentiles {
  std::uint32_t samples = 0;  // in the window (at most kLatencyWindow)
  double p50_ms = 0;
  double p90_ms = 0;
  double p99_ms = 0;
};

struct PeerState {
  PeerDescriptor descriptor;
  PeerStatus status = PeerStatus::kUnknown;
  bool eligible = true;
  bool health_eligible = true;
  int inflight = 0;
  int max_inflight = 0;
  std::uint64_t successes = 0;
  std::uint64_t failures = 0;
  std::optional<core::TimePoint> last_success;
  std::optional<core::TimePoint> last_failure;
  std::optional<double> latency_ewma_ms;
  LatencyPercentiles latency;
  std::optional<BreakerSnapshot> breaker;
};

// Cache-line aligned: the hot members below fill exactly the first line.
class alignas(64) Peer {
 public:
  // Window of recent latencies behind the percentiles: the last 256 samples.
  static constexpr std::uint32_t kLatencyWindow = 256;
  using Observer = std::function<void(Peer&)>;

  // `metrics` may be null. `tags` (rpc.service, rpc.transport, ...) are added
  // to every series; rpc.peer is added here.
  static std::shared_ptr<Peer> Create(PeerDescriptor descriptor, PeerOptions options,
                                      std::shared_ptr<core::Clock> clock,
                                      std::shared_ptr<core::MetricsRegistry> metrics = nullptr,
                                      core::Tags tags = {});
  ~Peer();
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  // What std::enable_shared_from_this would give, from a member in the cold
  // part of the object (the base class would sit in the hot first line).
  std::weak_ptr<Peer> weak_from_this() const { return self_; }
  std::shared_ptr<Peer> shared_from_this() const { return std::shared_ptr<Peer>(self_); }

  const PeerDescriptor& descriptor() const { return descriptor_; }
  const std::string& id() const { return descriptor_.id; }

  PeerStatus status() const { return status_.load(std::memory_order_acquire); }
  void SetStatus(PeerStatus status);
  int inflight() const { return inflight_.load(std::memory_order_acquire) & kInflightMask; }
  int max_inflight() const { return max_inflight_; }
  // Eligible: not Unavailable, health tracker agrees, breaker not open.
  // Capacity is separate (a busy peer is eligible but refuses).
  // Inline, from the hot line only (the breaker's state through its gate).
  bool IsEligible() const {
    return status() != PeerStatus::kUnavailable &&
           gate_.load(std::memory_order_acquire) != BreakerGate::kOpen &&
           (health_view_ == nullptr || health_view_->eligible());
  }
  bool AtCapacity() const { return max_inflight_ > 0 && inflight() >= max_inflight_; }

  // The common case (eligible, breaker closed, no cap) inline: three loads
  // from the hot line and one locked add; everything else in TryAcquireSlow.
  Admission TryAcquire() {
    if (max_inflight_ == 0 && status() != PeerStatus::kUnavailable &&
        gate_.load(std::memory_order_acquire) <= BreakerGate::kClosed &&
        (health_view_ == nullptr || health_view_->eligible())) {
      inflight_.fetch_add(1, std::memory_order_acq_rel);
      return Admission{AcquireResult::kAcquired, false};
    }
    return TryAcquireSlow();
  }
  // Outcome codes: OK = success; core::IsServerFailure codes = failure (count
  // for the breaker); anything else is neither (a client error).
  void Release(core::StatusCode outcome, core::Duration latency, bool probe = false);
  // Release() in two halves, for PeerLease: RecordRelease() feeds statistics
  // and the breaker (the lease still counts in in-flight); ReleaseLeaseSlot()
  // then gives the slot back (seq_cst, see CoordinatorShared::OnRelease) and
  // is the lease's last touch of the peer: it returns true when it deleted the
  // peer (its last shared_ptr was already gone), after which `peer` dangles.
  void RecordRelease(core::StatusCode outcome, core::Duration latency, bool probe);
  static bool ReleaseLeaseSlot(Peer* peer);
  void RecordFeedback(core::StatusCode outcome, core::Duration rtt);

  // EWMA of latency in ms, or nullopt before the first sample.
  std::optional<double> LatencyEwmaMs() const;
  LatencyPercentiles WindowPercentiles() const;
  // Outcome totals summed over every thread's cell (takes the stat
  // directory's mutex; no allocation): for periodic evaluators such as the
  // geo chooser, not for the pick path.
  std::uint64_t SuccessCount() const;
  std::uint64_t FailureCount() const;
  PeerState Snapshot() const;
  CircuitBreaker* breaker() const { return breaker_.get(); }

  void SetHealthHandle(std::shared_ptr<const PeerHealthHandle> handle);
  // What a lease release reaches for after giving its slot back (the owning
  // coordinator's shared state), held weakly. Set once, before sharing.
  void SetOwner(std::weak_ptr<void> owner) { owner_ = std::move(owner); }
  const std::weak_ptr<void>& owner() const { return owner_; }
  // Called (outside locks) when status, breaker state or health changes.
  void SetObserver(Observer observer);
  void NotifyObserver();

  // Position in the owning coordinator's current snapshot (-1: none); choosers
  // use it to find their per-peer bookkeeping in O(1).
  int slot() const { return slot_.load(std::memory_order_acquire); }
  void set_slot(int slot) { slot_.store(slot, std::memory_order_release); }

 private:
  // Push series for rare events. inflight, successes, failures and
  // lease.duration are observable series read at scrape time (observed_
  // below), so a release pays no metric RMW for them.
  struct Series {
    core::Counter* rejected_busy = nullptr;
    core::Counter* rejected_unhealthy = nullptr;
    core::Counter* rejected_circuit_open = nullptr;
  };
  // inflight_ = count | kRetired once the last shared_ptr is gone.
  static constexpr int kRetired = 1 << 30;
  static constexpr int kInflightMask = kRetired - 1;
  // The shared_ptr deleter: deletes now, or leaves it to the last lease.
  static void Retire(Peer* peer);

  Peer(PeerDescriptor descriptor, PeerOptions options, std::shared_ptr<core::Clock> clock,
       std::shared_ptr<core::MetricsRegistry> metrics, core::Tags tags);
  Admission TryAcquireSlow();
  void Refuse(AcquireResult result);
  void RecordOutcome(core::StatusCode outcome, bool failure, core::Duration latency);
  std::int64_t NowNanos() const;
  void OnBreakerTransition(BreakerState from, BreakerState to);

  // Hot: what every pick, acquire and release reads, packed into the first
  // cache line (static_assert in peer.cc) so a pick and a release on a cold
  // peer (1,000 peers do not stay in cache) miss once on the peer itself.
  // breaker_/health_ are raw views of the owning shared_ptrs further down.
  std::atomic<PeerStatus> status_;
  // The breaker's state as the hot path needs it (BreakerGate), written by
  // the breaker under its mutex (CircuitBreaker::AttachGate; detached in
  // ~Peer). kClosedClean when there is no breaker.
  std::atomic<BreakerGate> gate_{BreakerGate::kClosedClean};
  // Clock behind last_success/last_failure: internal::CoarseNowNanos() when
  // clock_ is the SystemClock (a load of a time a ticker thread refreshes,
  // instead of a clock read on every release), else clock_->Now()
  // (ManualClock stays exact).
  const bool coarse_clock_;
  std::atomic<int> inflight_{0};
  const int max_inflight_;  // options_.max_inflight
  std::atomic<std::uint32_t> window_next_{0};
  std::atomic<int> slot_{-1};
  // This peer's cells in the per-thread statistics (successes, failures,
  // latency histogram); freed after observed_ took its final values.
  internal::PeerStatId stat_;
  CircuitBreaker* breaker_view_ = nullptr;
  const PeerHealthHandle* health_view_ = nullptr;
  std::atomic<double> ewma_ms_{-1};               // < 0: no sample yet
  std::atomic<std::int64_t> last_success_ns_{0};  // since epoch; 0 = never
  const double ewma_alpha_;                       // options_.ewma_alpha

  std::shared_ptr<CircuitBreaker> breaker_;
  std::shared_ptr<const PeerHealthHandle> health_;

  const PeerDescriptor descriptor_;
  const PeerOptions options_;
  const std::shared_ptr<core::Clock> clock_;
  const std::shared_ptr<core::MetricsRegistry> metrics_;
  const core::Tags tags_;
  Series series_;
  std::weak_ptr<void> owner_;
  std::weak_ptr<Peer> self_;  // set by Create
  std::atomic<std::int64_t> last_failure_ns_{0};
  std::array<std::atomic<float>, kLatencyWindow> window_{};

  std::mutex observer_mu_;
  std::shared_ptr<const Observer> observer_;

  // Last members: destroyed (unregistered) first, while what they read is
  // still alive.
  std::array<core::ObservableHandle, 4> observed_;
};

}  // namespace omnirelay::peers
