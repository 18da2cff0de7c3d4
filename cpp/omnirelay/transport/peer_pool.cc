#include "omnirelay/transport/peer_pool.h"

#include <atomic>
#include <unordered_map>

#if OMNIRELAY_HAVE_PEERS
#include "omnirelay/peers/circuit_breaker.h"
#include "omnirelay/peers/coordinator.h"
#include "omnirelay/peers/health_tracker.h"
#endif

namespace omnirelay::transport {
namespace {

class InterimPeerPool final : public PeerPool {
 public:
  InterimPeerPool(std::vector<std::string> addresses, PeerPoolOptions options,
                  std::shared_ptr<core::Clock> clock)
      : addresses_(std::move(addresses)), options_(std::move(options)), clock_(std::move(clock)) {
    peers_ = std::vector<PeerState>(addresses_.size());
#if OMNIRELAY_HAVE_PEERS
    if (options_.breaker_consecutive_failures > 0) {
      peers::CircuitBreakerOptions breaker;
      breaker.consecutive_failures = options_.breaker_consecutive_failures;
      breaker.base_open_delay = options_.breaker_open_delay;
      for (auto& peer : peers_) peer.breaker = peers::CircuitBreaker::Create(breaker, clock_);
    }
#endif
  }

  absl::StatusOr<PeerLease> Acquire(const core::RequestMeta& meta,
                                    std::optional<core::TimePoint> deadline) override {
    const auto now = clock_->Now();
    if (deadline && *deadline <= now) {
      return core::MakeStatus(absl::StatusCode::kDeadlineExceeded,
                              "deadline passed before a peer was leased", "peer-acquire-deadline");
    }
    const size_t n = peers_.size();
    if (n == 0) return absl::UnavailableError("outbound has no peers");
    const size_t start = next_.fetch_add(1, std::memory_order_relaxed);
    for (size_t i = 0; i < n; ++i) {
      const size_t index = (start + i) % n;
      PeerState& peer = peers_[index];
      const int cap = options_.max_in_flight_per_peer;
      int64_t inflight = peer.in_flight.fetch_add(1, std::memory_order_acq_rel) + 1;
      if (cap > 0 && inflight > cap) {
        peer.in_flight.fetch_sub(1, std::memory_order_acq_rel);
        continue;
      }
      bool probe = false;
#if OMNIRELAY_HAVE_PEERS
      if (peer.breaker) {
        auto admission = peer.breaker->TryAdmit();
        if (admission == peers::CircuitBreaker::Admission::kRejected) {
          peer.in_flight.fetch_sub(1, std::memory_order_acq_rel);
          continue;
        }
        probe = admission == peers::CircuitBreaker::Admission::kProbe;
      }
#endif
      return PeerLease{.index = index, .probe = probe, .acquired = now, .token = nullptr};
    }
    exhausted_.fetch_add(1, std::memory_order_relaxed);
    return core::MakeStatus(absl::StatusCode::kResourceExhausted,
                            "every peer rejected the lease (busy or circuit open)",
                            "peer-pool-exhausted");
  }

  void Release(const PeerLease& lease, absl::StatusCode outcome) override {
    PeerState& peer = peers_[lease.index];
    peer.in_flight.fetch_sub(1, std::memory_order_acq_rel);
    (outcome == absl::StatusCode::kOk ? peer.successes : peer.failures)
        .fetch_add(1, std::memory_order_relaxed);
#if OMNIRELAY_HAVE_PEERS
    if (peer.breaker) peer.breaker->RecordOutcome(outcome, lease.probe);
#endif
  }

  const std::vector<std::string>& addresses() const override { return addresses_; }

  bool HasAvailablePeers() const override {
#if OMNIRELAY_HAVE_PEERS
    for (const auto& peer : peers_) {
      if (!peer.breaker || peer.breaker->state() != peers::BreakerState::kOpen) return true;
    }
    return false;
#else
    return !peers_.empty();
#endif
  }

  nlohmann::json Snapshot() const override {
    nlohmann::json list = nlohmann::json::array();
    for (size_t i = 0; i < peers_.size(); ++i) {
      const auto& peer = peers_[i];
      list.push_back({{"address", addresses_[i]},
                      {"inFlight", peer.in_flight.load()},
                      {"successes", peer.successes.load()},
                      {"failures", peer.failures.load()},
                      {"breaker", BreakerName(peer)}});
    }
    return {{"chooser", options_.chooser},
            {"implementation", "interim"},
            {"maxInFlightPerPeer", options_.max_in_flight_per_peer},
            {"poolExhausted", exhausted_.load()},
            {"peers", list}};
  }

 private:
  struct PeerState {
    std::atomic<int64_t> in_flight{0};
    std::atomic<int64_t> successes{0};
    std::atomic<int64_t> failures{0};
#if OMNIRELAY_HAVE_PEERS
    std::shared_ptr<peers::CircuitBreaker> breaker;
#endif
    PeerState() = default;
    PeerState(PeerState&&) noexcept {}
  };

  static std::string BreakerName(const PeerState& peer) {
#if OMNIRELAY_HAVE_PEERS
    if (peer.breaker) return std::string(peers::BreakerStateName(peer.breaker->state()));
#endif
    return "none";
  }

  const std::vector<std::string> addresses_;
  const PeerPoolOptions options_;
  const std::shared_ptr<core::Clock> clock_;
  std::vector<PeerState> peers_;
  std::atomic<size_t> next_{0};
  std::atomic<int64_t> exhausted_{0};
};

#if OMNIRELAY_HAVE_PEERS
class CoordinatorPeerPool final : public PeerPool {
 public:
  CoordinatorPeerPool(std::vector<std::string> addresses,
                      std::unique_ptr<peers::PeerListCoordinator> coordinator,
                      std::shared_ptr<peers::PeerLeaseHealthTracker> tracker,
                      std::shared_ptr<core::Clock> clock)
      : addresses_(std::move(addresses)),
        coordinator_(std::move(coordinator)),
        tracker_(std::move(tracker)),
        clock_(std::move(clock)) {
    for (size_t i = 0; i < addresses_.size(); ++i) index_[addresses_[i]] = i;
  }

  absl::StatusOr<PeerLease> Acquire(const core::RequestMeta& meta,
                                    std::optional<core::TimePoint> deadline) override {
    // The coordinator derives the deadline from meta itself; `deadline` is
    // the same value (EffectiveDeadline), so pass meta through.
    auto lease = coordinator_->Acquire(meta);
    if (!lease.ok()) return lease.status();
    auto it = index_.find(lease->peer()->id());
    if (it == index_.end()) return absl::InternalError("leased an unknown peer");
    PeerLease out{
        .index = it->second, .probe = lease->probe(), .acquired = clock_->Now(), .token = nullptr};
    out.token = std::make_shared<peers::PeerLease>(std::move(*lease));
    return out;
  }

  void Release(const PeerLease& lease, absl::StatusCode outcome) override {
    if (!lease.token) return;
    static_cast<peers::PeerLease*>(lease.token.get())
        ->Release(outcome, clock_->Now() - lease.acquired);
  }

  const std::vector<std::string>& addresses() const override { return addresses_; }

  bool HasAvailablePeers() const override {
    for (const auto& state : coordinator_->PeerStates()) {
      const bool open = state.breaker && state.breaker->state == peers::BreakerState::kOpen;
      if (state.eligible && state.status != peers::PeerStatus::kUnavailable && !open) return true;
    }
    return false;
  }

  nlohmann::json Snapshot() const override {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& state : coordinator_->PeerStates()) {
      list.push_back(
          {{"address", state.descriptor.endpoint},
           {"status", std::string(peers::PeerStatusName(state.status))},
           {"eligible", state.eligible},
           {"inFlight", state.inflight},
           {"maxInFlight", state.max_inflight},
           {"successes", state.successes},
           {"failures", state.failures},
           {"breaker",
            state.breaker ? std::string(peers::BreakerStateName(state.breaker->state)) : "none"}});
    }
    return {{"chooser", coordinator_->options().chooser},
            {"implementation", "peer-list-coordinator"},
            {"waiting", coordinator_->waiting()},
            {"peers", list}};
  }

  nlohmann::json LeaseHealth() const override { return tracker_->Diagnostics().ToJson(); }

 private:
  const std::vector<std::string> addresses_;
  std::unordered_map<std::string, size_t> index_;
  std::unique_ptr<peers::PeerListCoordinator> coordinator_;
  std::shared_ptr<peers::PeerLeaseHealthTracker> tracker_;
  std::shared_ptr<core::Clock> clock_;
};
#endif

}  // namespace

absl::StatusOr<std::shared_ptr<PeerPool>> MakeCoordinatorPeerPool(
    std::vector<std::string> addresses, PeerPoolOptions options, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics) {
#if OMNIRELAY_HAVE_PEERS
  auto tracker = peers::PeerLeaseHealthTracker::Create({}, clock, metrics);
  peers::PeerListCoordinatorOptions coordinator_options;
  coordinator_options.service = options.service;
  coordinator_options.transport = options.transport;
  coordinator_options.chooser = options.chooser;
  coordinator_options.peer_defaults.max_inflight = options.max_in_flight_per_peer;
  if (options.breaker_consecutive_failures > 0) {
    peers::CircuitBreakerOptions breaker;
    breaker.consecutive_failures = options.breaker_consecutive_failures;
    breaker.base_open_delay = options.breaker_open_delay;
    coordinator_options.peer_defaults.breaker = breaker;
  } else {
    coordinator_options.peer_defaults.breaker = std::nullopt;
  }
  auto coordinator =
      peers::PeerListCoordinator::Create(coordinator_options, clock, metrics, tracker);
  if (!coordinator.ok()) return coordinator.status();
  for (const auto& address : addresses) {
    peers::PeerDescriptor descriptor;
    descriptor.id = address;
    descriptor.endpoint = address;
    descriptor.status = peers::PeerStatus::kAvailable;
    if (auto added = (*coordinator)->AddPeer(descriptor); !added.ok()) return added.status();
  }
  return std::shared_ptr<PeerPool>(std::make_shared<CoordinatorPeerPool>(
      std::move(addresses), std::move(*coordinator), std::move(tracker), std::move(clock)));
#else
  return absl::UnimplementedError("built without the peer kit");
#endif
}

std::shared_ptr<PeerPool> MakeInterimPeerPool(std::vector<std::string> addresses,
                                              PeerPoolOptions options,
                                              std::shared_ptr<core::Clock> clock) {
  return std::make_shared<InterimPeerPool>(std::move(addresses), std::move(options),
                                           std::move(clock));
}

}  // namespace omnirelay::transport
