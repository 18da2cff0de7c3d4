#pragma once
// The seam between outbounds and the peer kit.
//
// An outbound asks its PeerPool for a lease on one peer per call and gives it
// back with the call's outcome; the pool decides who is chosen, who is busy
// (per-peer in-flight cap), whose breaker is open, and when the whole pool is
// exhausted (ResourceExhausted, error code "peer-pool-exhausted").
//
// The one implementation adapts the peer kit's PeerListCoordinator
// (cpp/omnirelay/peers/); outbounds only see this interface.
//
// Thread-safety: every method is thread-safe.
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"

namespace omnirelay::transport {

struct PeerLease {
  size_t index = 0;  // into the pool's address list (and the outbound's channels)
  bool probe = false;
  core::TimePoint acquired;
  std::shared_ptr<void> token;  // the implementation's own lease object
};

class PeerPool {
 public:
  virtual ~PeerPool() = default;
  // Non-blocking pick. ResourceExhausted when every peer rejected the lease;
  // DeadlineExceeded when `deadline` has already passed.
  virtual absl::StatusOr<PeerLease> Acquire(const core::RequestMeta& meta,
                                            std::optional<core::TimePoint> deadline) = 0;
  virtual void Release(const PeerLease& lease, absl::StatusCode outcome) = 0;
  virtual const std::vector<std::string>& addresses() const = 0;
  virtual bool HasAvailablePeers() const = 0;
  virtual nlohmann::json Snapshot() const = 0;
  // The peer kit's PeerLeaseHealthDiagnostics JSON, or null when unsupported.
  virtual nlohmann::json LeaseHealth() const { return nullptr; }
};

struct PeerPoolOptions {
  std::string chooser = "fewest-pending";  // a peers::ChooserNames() entry
  int max_in_flight_per_peer = 0;          // 0 = unlimited
  int breaker_consecutive_failures = 5;    // 0 disables the breaker
  core::Duration breaker_open_delay = std::chrono::seconds(1);
  std::string service;  // metric tags
  std::string transport;
};

// The production pool: the peer kit's PeerListCoordinator (chooser by name,
// contention rules, per-peer breaker and in-flight cap) with a
// PeerLeaseHealthTracker whose diagnostics LeaseHealth() returns. Note: with
// a deadline and every peer busy, Acquire waits (coordinator rule 5) on the
// calling thread. InvalidArgument for an unknown chooser.
absl::StatusOr<std::shared_ptr<PeerPool>> MakeCoordinatorPeerPool(
    std::vector<std::string> addresses, PeerPoolOptions options, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics);

}  // namespace omnirelay::transport
