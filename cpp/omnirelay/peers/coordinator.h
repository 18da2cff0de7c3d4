#pragma once
// PeerListCoordinator: the acquisition loop every outbound and control-plane
// client goes through to lease a peer.
//
// Rules (they fix the earlier implementation, where busy peers short-circuited
// deadlines):
//   1. No peers registered -> Unavailable ("peer-list-empty").
//   2. Effective deadline = min(meta.deadline, now + meta.time_to_live)
//      (core::RequestMeta::EffectiveDeadline); none when neither is set. A
//      deadline already past on arrival -> DeadlineExceeded at once.
//   3. The chooser's pick is tried first; if it refuses, every peer is probed
//      in the chooser's ProbeOrder before giving up. Each refusal counts
//      omnirelay.peer.lease_rejected{peer.rejection_reason=busy|unhealthy|circuit_open}.
//   4. No deadline and every peer refused -> count omnirelay.peer.pool_exhausted
//      and fail ResourceExhausted ("peer-pool-exhausted") immediately. Such a
//      request never ends in DeadlineExceeded.
//   5. With a deadline and every peer refused -> wait, woken by a release, a
//      peer turning available/eligible, or the list changing (no polling),
//      and probe again; at the deadline (a Clock timer, so ManualClock drives
//      it) fail DeadlineExceeded ("peer-acquire-deadline"), counting
//      omnirelay.peer.acquire_deadline_exceeded and NOT pool_exhausted.
//   6. Membership/status changes publish a new immutable snapshot and wake
//      waiters, who re-read it: joins, leaves and recoveries are picked up
//      while requests wait, and leasing resumes with no restart.
//
// Thread-safety: Acquire, PeerLease::Release and every other method are
// thread-safe. The hot path reads an immutable shared_ptr<const PeerSnapshot>
// from a per-thread cache validated by an atomic version (no mutex), and
// per-peer atomics; membership changes serialise on one mutex. Acquire blocks
// only in rule 5.
// Ownership: the coordinator owns its chooser and peers (via snapshots). A
// lease holds no reference count: it keeps its peer alive through the peer's
// in-flight count (a removed peer is deleted by its last release, see
// peer.h), and reaches the coordinator's shared state on release through the
// releasing thread's snapshot cache, or, when that thread has none (a lease
// released on another thread than it was taken on), through the peer's weak
// owner reference. Leases may outlive the coordinator; their release then
// only returns the peer's slot. A thread's snapshot cache may keep a removed
// peer (or, after the coordinator is destroyed, its shared state) alive until
// that thread next acquires through the same cache slot or exits; such a
// peer is never picked again.
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"
#include "omnirelay/peers/chooser.h"
#include "omnirelay/peers/health_tracker.h"
#include "omnirelay/peers/peer.h"

namespace omnirelay::peers {

struct PeerListCoordinatorOptions {
  // Metric tags (rpc.service, rpc.procedure, rpc.transport); empty = omitted.
  std::string service;
  std::string procedure;
  std::string transport;
  std::string chooser = "fewest-pending";  // the seeds' default
  ChooserOptions chooser_options;
  // When set, the chooser instance comes from here instead of `chooser`
  // (choosers that need outside state: leadership's LeaderChooser, a
  // shard-aware chooser). Called once by Create; a null result is refused.
  std::function<std::unique_ptr<PeerChooser>()> chooser_factory;
  PeerOptions peer_defaults;  // for AddPeer without explicit options
};

class CoordinatorShared;

// One leased in-flight slot on a peer. Move-only. Release() exactly once; a
// lease destroyed unreleased is released as Cancelled (neither success nor
// failure) with no latency.
class PeerLease {
 public:
  PeerLease() = default;
  // Inline: Acquire returns a lease through StatusOr, which moves it.
  PeerLease(PeerLease&& other) noexcept
      : peer_(std::exchange(other.peer_, nullptr)),
        owner_id_(other.owner_id_),
        version_(other.version_),
        index_(other.index_),
        probe_(other.probe_) {}
  PeerLease& operator=(PeerLease&& other) noexcept;
  PeerLease(const PeerLease&) = delete;
  PeerLease& operator=(const PeerLease&) = delete;
  ~PeerLease() {
    if (peer_) Release(core::StatusCode::kCancelled, core::Duration::zero());
  }

  explicit operator bool() const { return peer_ != nullptr; }
  Peer* peer() const { return peer_; }
  bool probe() const { return probe_; }

  void Release(core::StatusCode outcome, core::Duration latency);
  void Release(const absl::Status& outcome, core::Duration latency) {
    Release(outcome.code(), latency);
  }

 private:
  friend class PeerListCoordinator;
  // A lease is a handle, not an owner: the peer, its index in the snapshot of
  // `version`, and the process-unique id of the coordinator's shared state
  // (to find it in the releasing thread's snapshot cache). Copying it costs
  // no atomic operation.
  PeerLease(Peer* peer, int index, std::uint64_t version, std::uint64_t owner_id, bool probe)
      : peer_(peer), owner_id_(owner_id), version_(version), index_(index), probe_(probe) {}
  Peer* peer_ = nullptr;
  std::uint64_t owner_id_ = 0;
  std::uint64_t version_ = 0;
  int index_ = -1;
  bool probe_ = false;
};

class PeerListCoordinator {
 public:
  // InvalidArgument for an unknown chooser name. `tracker` may be null.
  static absl::StatusOr<std::unique_ptr<PeerListCoordinator>> Create(
      PeerListCoordinatorOptions options, std::shared_ptr<core::Clock> clock,
      std::shared_ptr<core::MetricsRegistry> metrics,
      std::shared_ptr<PeerLeaseHealthTracker> tracker = nullptr);
  ~PeerListCoordinator();
  PeerListCoordinator(const PeerListCoordinator&) = delete;
  PeerListCoordinator& operator=(const PeerListCoordinator&) = delete;

  // AlreadyExists for a duplicate id; InvalidArgument for an empty id+endpoint.
  absl::StatusOr<std::shared_ptr<Peer>> AddPeer(PeerDescriptor descriptor,
                                                std::optional<PeerOptions> options = std::nullopt);
  // NotFound for an unknown id. Leases on the peer stay valid.
  absl::Status RemovePeer(std::string_view peer_id);
  // Makes the list exactly `descriptors` (e.g. a gossip membership snapshot):
  // adds the new, removes the missing, keeps existing peers' state.
  absl::Status ReplacePeers(std::vector<PeerDescriptor> descriptors);
  absl::Status SetPeerStatus(std::string_view peer_id, PeerStatus status);
  std::shared_ptr<Peer> FindPeer(std::string_view peer_id) const;

  // Rules above. Returns a lease, or Unavailable / ResourceExhausted /
  // DeadlineExceeded (each with an error code).
  absl::StatusOr<PeerLease> Acquire(const core::RequestMeta& meta);
  // Acquire's fast path alone, for callers that must not block (an event
  // loop): the chooser's pick, leased if it admits the call. Never waits.
  // nullopt when there are no peers, the deadline has passed or the pick
  // refused (the peer counts that refusal in lease_rejected, as it counts
  // every refused probe); the caller then runs Acquire where it may wait,
  // and that call applies the rules and counts pool_exhausted and
  // acquire_deadline_exceeded.
  std::optional<PeerLease> TryAcquireNow(const core::RequestMeta& meta);

  std::shared_ptr<const PeerSnapshot> snapshot() const;
  std::vector<PeerState> PeerStates() const;
  int waiting() const;  // requests currently blocked in rule 5
  // Wakes requests blocked in rule 5 to re-run the chooser: for choosers
  // whose pick depends on state outside the snapshot (the current leader).
  void Wake();
  PeerChooser& chooser();
  const PeerListCoordinatorOptions& options() const { return options_; }

 private:
  PeerListCoordinator(PeerListCoordinatorOptions options, std::shared_ptr<CoordinatorShared> shared,
                      std::shared_ptr<PeerLeaseHealthTracker> tracker);
  // Requires update_mu_.
  void PublishLocked(std::vector<std::shared_ptr<Peer>> peers);
  std::shared_ptr<Peer> MakePeerLocked(PeerDescriptor descriptor,
                                       std::optional<PeerOptions> options);
  absl::StatusOr<PeerLease> AcquireSlow(std::shared_ptr<const PeerSnapshot> snapshot,
                                        const core::RequestMeta& meta,
                                        std::optional<core::TimePoint> deadline, int tried);

  const PeerListCoordinatorOptions options_;
  const std::shared_ptr<CoordinatorShared> shared_;
  const std::shared_ptr<PeerLeaseHealthTracker> tracker_;
  std::uint64_t tracker_listener_ = 0;
  core::Tags tags_;
  mutable std::mutex update_mu_;
};

}  // namespace omnirelay::peers
