#pragma once
// PeerLeaseHealthTracker: the one view of peer health shared by the data
// plane (choosers, PeerListCoordinator) and the control plane (gossip,
// leadership, the ResourceLease dispatcher).
//
// Rules:
//   * A peer the tracker has never heard from is eligible: the tracker is
//     opt-in, so data-plane peers without a heartbeat source still route.
//   * RecordHeartbeat makes a peer tracked and eligible; it stays eligible
//     while now < last_heartbeat + heartbeat_grace. Expiry is driven by a
//     Clock timer (one per tracked peer, re-armed lazily), so eligibility
//     flips and listeners hear about it even when nobody asks.
//   * RecordDisconnect(reason) makes it ineligible at once and moves its
//     active leases to pending reassignments; the next heartbeat restores it.
//   * Lease bookkeeping: RecordLeaseAssigned / RecordLeaseReleased(requeued) /
//     RecordReassignmentCompleted; metadata labels (e.g. from gossip) merge.
//
// Choosers consult eligibility through a PeerHealthHandle (Handle(peer_id)):
// the same answer as IsPeerEligible(peer_id) but one atomic load, no map
// lookup, so it is cheap enough for every pick.
//
// Thread-safety: all methods are thread-safe (one mutex for the table;
// handles are atomics). Listeners run outside the mutex on the calling (or
// timer) thread and must not block.
// Ownership: always held by shared_ptr (Create); timers hold weak_ptrs.
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

#include "nlohmann/json.hpp"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"

namespace omnirelay::peers {

struct PeerLeaseHealthOptions {
  core::Duration heartbeat_grace = std::chrono::seconds(10);
};

// Eligibility as one atomic, handed to choosers.
class PeerHealthHandle {
 public:
  explicit PeerHealthHandle(std::string peer_id) : peer_id_(std::move(peer_id)) {}
  bool eligible() const { return eligible_.load(std::memory_order_acquire); }
  const std::string& peer_id() const { return peer_id_; }

 private:
  friend class PeerLeaseHealthTracker;
  const std::string peer_id_;
  std::atomic<bool> eligible_{true};
};

struct PeerLeaseHealthSnapshot {
  std::string peer_id;
  bool tracked = false;  // has ever sent a heartbeat
  bool is_healthy = true;
  std::optional<core::TimePoint> last_heartbeat;
  std::optional<core::TimePoint> last_disconnect;
  std::string disconnect_reason;
  std::int64_t active_leases = 0;
  std::int64_t pending_reassignments = 0;
  std::map<std::string, std::string> metadata;
};

// Payload of /omnirelay/control/lease-health.
struct PeerLeaseHealthDiagnostics {
  std::vector<PeerLeaseHealthSnapshot> peers;
  int eligible = 0;
  int unhealthy = 0;
  std::int64_t pending_reassignments = 0;

  static PeerLeaseHealthDiagnostics FromSnapshots(std::vector<PeerLeaseHealthSnapshot> peers);
  // {"peers":[{"peerId","isHealthy","tracked","lastHeartbeat","lastDisconnect",
  //   "disconnectReason","activeLeases","pendingReassignments","metadata"}],
  //  "eligible","unhealthy","pendingReassignments"}; times are RFC 3339.
  nlohmann::json ToJson() const;
};

class PeerLeaseHealthTracker : public std::enable_shared_from_this<PeerLeaseHealthTracker> {
 public:
  using Listener = std::function<void(const std::string& peer_id, bool eligible)>;

  // `metrics` may be null (no metrics recorded).
  static std::shared_ptr<PeerLeaseHealthTracker> Create(
      PeerLeaseHealthOptions options, std::shared_ptr<core::Clock> clock,
      std::shared_ptr<core::MetricsRegistry> metrics = nullptr);
  ~PeerLeaseHealthTracker();

  void RecordHeartbeat(std::string_view peer_id);
  void RecordDisconnect(std::string_view peer_id, std::string_view reason);
  void RecordLeaseAssigned(std::string_view peer_id);
  void RecordLeaseReleased(std::string_view peer_id, bool requeued);
  void RecordReassignmentCompleted(std::string_view peer_id);
  void SetMetadata(std::string_view peer_id, const std::map<std::string, std::string>& labels);
  // Drops the peer's state (it becomes "never heard of": eligible).
  void Forget(std::string_view peer_id);

  bool IsPeerEligible(std::string_view peer_id) const;
  std::shared_ptr<const PeerHealthHandle> Handle(std::string_view peer_id);

  // Also refreshes the omnirelay.peer.lease.{healthy,unhealthy,pending_reassignments} gauges.
  std::vector<PeerLeaseHealthSnapshot> Snapshot() const;
  PeerLeaseHealthDiagnostics Diagnostics() const {
    return PeerLeaseHealthDiagnostics::FromSnapshots(Snapshot());
  }

  std::uint64_t AddListener(Listener listener);
  void RemoveListener(std::uint64_t id);

  const PeerLeaseHealthOptions& options() const { return options_; }

 private:
  struct Entry {
    std::shared_ptr<PeerHealthHandle> handle;
    bool tracked = false;
    std::optional<core::TimePoint> last_heartbeat;
    std::optional<core::TimePoint> last_disconnect;
    std::string disconnect_reason;
    std::int64_t active_leases = 0;
    std::int64_t pending_reassignments = 0;
    std::map<std::string, std::string> metadata;
    std::optional<core::TimerId> timer;
  };

  PeerLeaseHealthTracker(PeerLeaseHealthOptions options, std::shared_ptr<core::Clock> clock,
                         std::shared_ptr<core::MetricsRegistry> metrics);
  Entry& EntryLocked(std::string_view peer_id);
  void ArmTimerLocked(const std::string& peer_id, Entry& entry, core::TimePoint when);
  void OnGraceTimer(const std::string& peer_id);
  // Sets eligibility; returns true when it changed (caller notifies after unlocking).
  static bool SetEligible(Entry& entry, bool eligible);
  void Notify(const std::string& peer_id, bool eligible);
  void Count(const core::MetricDescriptor& descriptor, std::string_view peer_id);

  const PeerLeaseHealthOptions options_;
  const std::shared_ptr<core::Clock> clock_;
  const std::shared_ptr<core::MetricsRegistry> metrics_;

  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::map<std::uint64_t, std::shared_ptr<const Listener>> listeners_;
  std::uint64_t next_listener_ = 1;
};

}  // namespace omnirelay::peers
