#include "omnirelay/transport/peer_pool.h"

#include <atomic>
#include <mutex>
#include <set>
#include <unordered_map>

#include "omnirelay/peers/circuit_breaker.h"
#include "omnirelay/peers/coordinator.h"
#include "omnirelay/peers/health_tracker.h"

namespace omnirelay::transport {
namespace {

// The pool's peers by id, as published: never mutated, swapped whole.
struct PeerTable {
  std::unordered_map<std::string, std::shared_ptr<const PoolPeer>> by_id;
  std::vector<PeerEndpoint> order;  // Peers()
};

// A lease that found its peer gone from the table (it was picked from the
// coordinator's snapshot a moment before a removal published) is handed back
// and the pick retried this many times.
constexpr int kRemovedPeerRetries = 3;

class CoordinatorPeerPool final : public PeerPool {
 public:
  CoordinatorPeerPool(std::vector<std::string> addresses,
                      std::unique_ptr<peers::PeerListCoordinator> coordinator,
                      std::shared_ptr<peers::PeerLeaseHealthTracker> tracker,
                      std::shared_ptr<core::Clock> clock, bool exhaustion_is_unavailable,
                      std::string exhaustion_error_code, std::string exhaustion_message)
      : addresses_(std::move(addresses)),
        coordinator_(std::move(coordinator)),
        tracker_(std::move(tracker)),
        clock_(std::move(clock)),
        exhaustion_is_unavailable_(exhaustion_is_unavailable),
        exhaustion_error_code_(std::move(exhaustion_error_code)),
        exhaustion_message_(std::move(exhaustion_message)) {
    auto table = std::make_shared<PeerTable>();
    for (size_t i = 0; i < addresses_.size(); ++i) {
      auto peer = std::make_shared<PoolPeer>();
      peer->id = addresses_[i];
      peer->address = addresses_[i];
      peer->index = i;
      table->by_id[peer->id] = peer;
      table->order.push_back({peer->id, peer->address});
    }
    table_ = std::move(table);
  }

  absl::StatusOr<PeerLease> Acquire(const core::RequestMeta& meta,
                                    std::optional<core::TimePoint> deadline) override {
    // The coordinator derives the deadline from meta itself; `deadline` is
    // the same value (EffectiveDeadline), so pass meta through.
    (void)deadline;
    for (int attempt = 0;; ++attempt) {
      auto lease = coordinator_->Acquire(meta);
      if (!lease.ok()) {
        if (exhaustion_is_unavailable_ &&
            lease.status().code() == absl::StatusCode::kResourceExhausted) {
          return core::MakeStatus(core::StatusCode::kUnavailable, exhaustion_message_,
                                  exhaustion_error_code_);
        }
        return lease.status();
      }
      std::shared_ptr<const PoolPeer> peer = Find(lease->peer()->id());
      if (peer == nullptr) {
        // Removed between the coordinator's pick and our table read.
        lease->Release(core::StatusCode::kCancelled, core::Duration::zero());
        if (attempt < kRemovedPeerRetries) continue;
        return core::MakeStatus(core::StatusCode::kUnavailable,
                                "the peer list changed while leasing", "peer-list-changed");
      }
      PeerLease out{.index = peer->index,
                    .probe = lease->probe(),
                    .acquired = clock_->Now(),
                    .token = std::make_shared<peers::PeerLease>(std::move(*lease)),
                    .peer = std::move(peer)};
      return out;
    }
  }

  std::optional<PeerLease> TryAcquireNow(const core::RequestMeta& meta) override {
    auto lease = coordinator_->TryAcquireNow(meta);
    if (!lease) return std::nullopt;
    std::shared_ptr<const PoolPeer> peer = Find(lease->peer()->id());
    if (peer == nullptr) {  // removed a moment ago: let Acquire retry
      lease->Release(core::StatusCode::kCancelled, core::Duration::zero());
      return std::nullopt;
    }
    return PeerLease{.index = peer->index,
                     .probe = lease->probe(),
                     .acquired = clock_->Now(),
                     .token = std::make_shared<peers::PeerLease>(std::move(*lease)),
                     .peer = std::move(peer)};
  }

  void Release(const PeerLease& lease, absl::StatusCode outcome) override {
    if (!lease.token) return;
    static_cast<peers::PeerLease*>(lease.token.get())
        ->Release(outcome, clock_->Now() - lease.acquired);
  }

  const std::vector<std::string>& addresses() const override { return addresses_; }

  absl::Status SetPeers(std::vector<PeerEndpoint> wanted) override {
    std::lock_guard update(update_mu_);
    std::set<std::string> ids;
    for (auto& endpoint : wanted) {
      if (endpoint.id.empty()) endpoint.id = endpoint.address;
      if (endpoint.id.empty()) return absl::InvalidArgumentError("a peer needs an id or address");
      if (!ids.insert(endpoint.id).second) {
        return absl::InvalidArgumentError("duplicate peer '" + endpoint.id + "'");
      }
    }
    const std::shared_ptr<const PeerTable> current = LoadTable();
    auto next = std::make_shared<PeerTable>();
    std::vector<peers::PeerDescriptor> descriptors;
    for (const auto& endpoint : wanted) {
      auto it = current->by_id.find(endpoint.id);
      std::shared_ptr<const PoolPeer> peer;
      if (it != current->by_id.end() && it->second->address == endpoint.address &&
          it->second->region == endpoint.region && it->second->zone == endpoint.zone) {
        peer = it->second;  // kept: same channel, same coordinator peer
      } else {
        if (it != current->by_id.end()) {
          // Same id, new address (or locality): a new coordinator peer
          // (fresh breaker and statistics) and a new attachment.
          (void)coordinator_->RemovePeer(endpoint.id);
        }
        auto made = std::make_shared<PoolPeer>();
        made->id = endpoint.id;
        made->address = endpoint.address;
        made->region = endpoint.region;
        made->zone = endpoint.zone;
        if (factory_) made->attachment = factory_(endpoint.address);
        peer = std::move(made);
      }
      next->by_id[endpoint.id] = peer;
      next->order.push_back(endpoint);
      peers::PeerDescriptor descriptor;
      descriptor.id = endpoint.id;
      descriptor.endpoint = endpoint.address;
      descriptor.region = endpoint.region;
      descriptor.zone = endpoint.zone;
      descriptor.status = peers::PeerStatus::kAvailable;
      descriptors.push_back(std::move(descriptor));
    }
    // Publish the table before the coordinator can pick an added peer, and
    // keep the removed ones in it until the coordinator stopped picking them
    // (a pick racing the removal then still finds its peer).
    auto both = std::make_shared<PeerTable>(*next);
    for (const auto& [id, peer] : current->by_id) both->by_id.emplace(id, peer);
    StoreTable(std::move(both));
    auto replaced = coordinator_->ReplacePeers(std::move(descriptors));
    StoreTable(std::move(next));
    return replaced;
  }

  std::vector<PeerEndpoint> Peers() const override { return LoadTable()->order; }

  void SetAttachmentFactory(AttachmentFactory factory) override {
    std::lock_guard update(update_mu_);
    factory_ = std::move(factory);
    const std::shared_ptr<const PeerTable> current = LoadTable();
    auto next = std::make_shared<PeerTable>(*current);
    for (auto& [id, peer] : next->by_id) {
      if (peer->attachment) continue;
      auto made = std::make_shared<PoolPeer>(*peer);
      made->attachment = factory_(made->address);
      peer = std::move(made);
    }
    StoreTable(std::move(next));
  }

  void Wake() override { coordinator_->Wake(); }

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
          {{"id", state.descriptor.id},
           {"address", state.descriptor.endpoint},
           {"status", std::string(peers::PeerStatusName(state.status))},
           {"eligible", state.eligible},
           {"inFlight", state.inflight},
           {"maxInFlight", state.max_inflight},
           {"successes", state.successes},
           {"failures", state.failures},
           {"breaker",
            state.breaker ? std::string(peers::BreakerStateName(state.breaker->state)) : "none"}});
    }
    return {{"chooser", std::string(coordinator_->chooser().name())},
            {"implementation", "peer-list-coordinator"},
            {"waiting", coordinator_->waiting()},
            {"peers", list}};
  }

  nlohmann::json LeaseHealth() const override { return tracker_->Diagnostics().ToJson(); }

 private:
  std::shared_ptr<const PoolPeer> Find(const std::string& id) const {
    std::lock_guard lock(table_mu_);
    auto it = table_->by_id.find(id);
    return it == table_->by_id.end() ? nullptr : it->second;
  }
  std::shared_ptr<const PeerTable> LoadTable() const {
    std::lock_guard lock(table_mu_);
    return table_;
  }
  void StoreTable(std::shared_ptr<const PeerTable> next) {
    {
      std::lock_guard lock(table_mu_);
      table_.swap(next);
    }
    // `next` (the old table, and with it the attachments no lease holds any
    // more) is released here, outside the lock.
  }

  const std::vector<std::string> addresses_;
  std::unique_ptr<peers::PeerListCoordinator> coordinator_;
  std::shared_ptr<peers::PeerLeaseHealthTracker> tracker_;
  std::shared_ptr<core::Clock> clock_;
  const bool exhaustion_is_unavailable_;
  const std::string exhaustion_error_code_;
  const std::string exhaustion_message_;
  // Readers (Acquire) hold table_mu_ only to look up one id or copy the
  // pointer; writers serialise on update_mu_ and swap the table.
  mutable std::mutex table_mu_;
  std::shared_ptr<const PeerTable> table_;
  std::mutex update_mu_;
  AttachmentFactory factory_;  // guarded by update_mu_
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
  coordinator_options.chooser_factory = options.chooser_factory;
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
      std::move(addresses), std::move(*coordinator), std::move(tracker), std::move(clock),
      options.exhaustion_is_unavailable, std::move(options.exhaustion_error_code),
      std::move(options.exhaustion_message)));
}

}  // namespace omnirelay::transport
