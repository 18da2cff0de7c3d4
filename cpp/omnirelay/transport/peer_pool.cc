#include "omnirelay/transport/peer_pool.h"

#include <atomic>
#include <unordered_map>

#include "omnirelay/peers/circuit_breaker.h"
#include "omnirelay/peers/coordinator.h"
#include "omnirelay/peers/health_tracker.h"

namespace omnirelay::transport {
namespace {

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

}  // namespace

absl::StatusOr<std::shared_ptr<PeerPool>> MakeCoordinatorPeerPool(
    std::vector<std::string> addresses, PeerPoolOptions options, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics) {
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
}

}  // namespace omnirelay::transport
