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
// Static and dynamic lists. A pool built from a list of addresses keeps it
// for `addresses()` and `PeerLease::index` (the frame relay indexes its
// upstream connections by it). Any pool also takes runtime changes through
// SetPeers (mesh-selected and leader outbounds, docs/mesh.md): the list is an
// immutable table swapped under a short mutex; a removed peer is no longer
// chosen, leases already taken on it complete normally, and its attachment
// (an outbound's channel) is dropped when the last such lease is gone.
//
// Attachments. An outbound registers an AttachmentFactory (Start); the pool
// calls it once per peer (for the peers it has, then for each peer added) and
// hands the result out in every lease on that peer (`PeerLease::peer`), so
// the outbound never indexes a vector of its own.
//
// Thread-safety: every method is thread-safe.
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"

namespace omnirelay::peers {
class PeerChooser;
}  // namespace omnirelay::peers

namespace omnirelay::transport {

// One peer as a pool hands it out. Immutable once published.
struct PoolPeer {
  static constexpr size_t kNoIndex = static_cast<size_t>(-1);
  std::string id;           // unique in the pool (a mesh member id, or the address)
  std::string address;      // what the outbound dials ("host:port", "http://...")
  size_t index = kNoIndex;  // position in addresses() for a static pool's peers
  std::shared_ptr<void> attachment = nullptr;  // from the AttachmentFactory; null without one
  std::string region;                          // locality, from PeerEndpoint (geo chooser)
  std::string zone;
};

// What SetPeers takes: a peer's identity and the address to dial.
struct PeerEndpoint {
  std::string id;  // empty = the address
  std::string address;
  // Locality (mesh member metadata): becomes the peer kit descriptor's
  // region/zone, which the geo chooser routes on. Empty = unknown.
  std::string region = {};
  std::string zone = {};
  bool operator==(const PeerEndpoint&) const = default;
};

// Made once per peer (e.g. a grpc::Channel); may be called with the pool's
// update lock held, so it must not call back into the pool.
using AttachmentFactory = std::function<std::shared_ptr<void>(const std::string& address)>;

struct PeerLease {
  size_t index = 0;  // static pools: into addresses(); PoolPeer::kNoIndex for added peers
  bool probe = false;
  core::TimePoint acquired;
  std::shared_ptr<void> token;  // the implementation's own lease object
  // The leased peer (address, attachment); holding the lease keeps it alive
  // even after the peer was removed from the pool.
  std::shared_ptr<const PoolPeer> peer = nullptr;
};

class PeerPool {
 public:
  virtual ~PeerPool() = default;
  // Non-blocking pick. ResourceExhausted when every peer rejected the lease;
  // DeadlineExceeded when `deadline` has already passed.
  virtual absl::StatusOr<PeerLease> Acquire(const core::RequestMeta& meta,
                                            std::optional<core::TimePoint> deadline) = 0;
  // Acquire's non-blocking fast path for event loops: a lease when the
  // chooser's pick admits the call at once, else nullopt and the caller runs
  // Acquire off the loop (which counts exhaustion and deadlines). Pools
  // without a fast path return nullopt.
  virtual std::optional<PeerLease> TryAcquireNow(const core::RequestMeta& meta) {
    (void)meta;
    return std::nullopt;
  }
  virtual void Release(const PeerLease& lease, absl::StatusCode outcome) = 0;
  // The static list the pool was built with (empty for a dynamic pool); see
  // Peers() for the current list.
  virtual const std::vector<std::string>& addresses() const = 0;
  // Dynamic lists: the pool's peers become exactly `peers` (by id). New ids
  // are added (attachment made), missing ids removed (leases on them
  // complete normally), ids whose address changed are replaced, the rest keep
  // their state (breaker, in-flight, statistics). InvalidArgument for a
  // duplicate id. Serialised internally; safe against concurrent Acquire.
  virtual absl::Status SetPeers(std::vector<PeerEndpoint> peers) = 0;
  // The current peers, in the order of the last SetPeers (static: the list).
  virtual std::vector<PeerEndpoint> Peers() const = 0;
  // Registers the factory and makes the attachments of the current peers.
  // One factory per pool (its outbound's); a second call replaces the
  // factory for peers added later.
  virtual void SetAttachmentFactory(AttachmentFactory factory) = 0;
  // Makes waiting Acquires re-run the chooser (a chooser whose answer
  // depends on outside state, such as the leader chooser, calls this when
  // that state changes).
  virtual void Wake() = 0;
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
  // Overrides `chooser` with an instance made here (e.g. leadership's
  // LeaderChooser, a shard-aware chooser). Called once, at pool creation.
  std::function<std::unique_ptr<peers::PeerChooser>()> chooser_factory = nullptr;
  // Leader routing: "no peer could be leased" (no leader, the leader not
  // among the peers, or its breaker open) fails UNAVAILABLE ("no-leader")
  // rather than RESOURCE_EXHAUSTED, so callers retry it as a hand-over.
  bool exhaustion_is_unavailable = false;
  // The error code and message of that UNAVAILABLE (the shard route names
  // the unreachable shard target instead of a leader).
  std::string exhaustion_error_code = "no-leader";
  std::string exhaustion_message =
      "no leader can be reached (none elected, not a member, or its breaker is open)";
};

// The production pool: the peer kit's PeerListCoordinator (chooser by name,
// contention rules, per-peer breaker and in-flight cap) with a
// PeerLeaseHealthTracker whose diagnostics LeaseHealth() returns. Note: with
// a deadline and every peer busy, Acquire waits (coordinator rule 5) on the
// calling thread. InvalidArgument for an unknown chooser.
// `addresses` may be empty: a dynamic pool, filled by SetPeers (Acquire on an
// empty pool fails UNAVAILABLE, "peer-list-empty").
absl::StatusOr<std::shared_ptr<PeerPool>> MakeCoordinatorPeerPool(
    std::vector<std::string> addresses, PeerPoolOptions options, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics);

}  // namespace omnirelay::transport
