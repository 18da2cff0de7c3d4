#include "omnirelay/peers/coordinator.h"

#include <array>
#include <set>
#include <utility>

#include "omnirelay/peers/peer_metrics.h"

namespace omnirelay::peers {
namespace {

// Per-thread snapshot cache (see CoordinatorShared::LoadCached): the last
// snapshot this thread saw of up to kCacheSlots coordinators. It also pins a
// coordinator's shared state (snapshot->owner) while this thread releases a
// lease (PeerLease::Release).
struct SnapshotCacheEntry {
  std::uint64_t id = 0;
  std::uint64_t version = 0;
  std::shared_ptr<const PeerSnapshot> snapshot;
};
constexpr std::size_t kCacheSlots = 4;
thread_local std::array<SnapshotCacheEntry, kCacheSlots> tls_snapshot_cache;

}  // namespace

// State shared by the coordinator, its snapshots (via PeerSnapshot::owner,
// so leases can release after the coordinator is gone), peer observers and
// deadline timers (via weak_ptr).
class CoordinatorShared {
 public:
  std::shared_ptr<core::Clock> clock;
  std::shared_ptr<core::MetricsRegistry> metrics;
  std::unique_ptr<PeerChooser> chooser;
  bool chooser_tracks_load = false;
  core::Counter* pool_exhausted = nullptr;
  core::Counter* deadline_exceeded = nullptr;

  // The published snapshot. A mutex held only for a shared_ptr copy rather
  // than std::atomic<std::shared_ptr>: GCC 12's implementation of the latter
  // (a lock bit inside the pointer) is reported as a data race by TSan, and
  // the copy under an uncontended mutex costs about the same.
  class SnapshotCell {
   public:
    std::shared_ptr<const PeerSnapshot> load(std::memory_order = std::memory_order_seq_cst) const {
      std::lock_guard lock(mu_);
      return ptr_;
    }
    void store(std::shared_ptr<const PeerSnapshot> next,
               std::memory_order = std::memory_order_seq_cst) {
      std::lock_guard lock(mu_);
      ptr_.swap(next);
      // `next` (the old snapshot) is released after the lock is dropped.
    }

   private:
    mutable std::mutex mu_;
    std::shared_ptr<const PeerSnapshot> ptr_;
  } snapshot;
  std::atomic<std::uint64_t> version{0};
  // Process-unique (never reused, unlike `this`): keys the per-thread cache.
  const std::uint64_t id = NextId();

  // The hot-path read of the current snapshot: a per-thread cache of the
  // last snapshot this thread saw of this coordinator, valid while `version`
  // has not moved, so Acquire takes no mutex. Returns a reference to the
  // cached shared_ptr (the caller copies it only for a lease).
  //
  // Lifetime: each thread keeps the last snapshot of up to kCacheSlots
  // coordinators (slot = id % kCacheSlots) until it next reads a changed
  // version through that slot or exits, so a removed peer (or a destroyed
  // coordinator's shared state) may live on in an idle thread's cache; it is
  // never picked again (every read revalidates against `version`).
  const std::shared_ptr<const PeerSnapshot>& LoadCached() {
    SnapshotCacheEntry& entry = tls_snapshot_cache[id % kCacheSlots];
    const std::uint64_t current = version.load(std::memory_order_acquire);
    if (entry.id == id && entry.version == current) return entry.snapshot;
    auto fresh = snapshot.load();
    entry.id = id;
    // The snapshot's own version (it may already be newer than `current`).
    entry.version = fresh ? fresh->version : current;
    entry.snapshot = std::move(fresh);
    return entry.snapshot;
  }

  static std::uint64_t NextId() {
    static std::atomic<std::uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
  }

  // Waiting (rule 5). `waiters` lets releases skip the mutex when nobody
  // waits; `wake_generation` changes on every event that may free a peer.
  std::atomic<int> waiters{0};
  std::atomic<std::uint64_t> wake_generation{0};
  std::mutex wait_mu;
  std::condition_variable wait_cv;

  void Wake() {
    {
      std::lock_guard lock(wait_mu);
      wake_generation.fetch_add(1, std::memory_order_seq_cst);
    }
    wait_cv.notify_all();
  }

  // A peer's load or eligibility changed: keep the chooser's index current.
  void PeerChanged(const PeerSnapshot* lease_snapshot, int lease_index, Peer& peer) {
    if (!chooser_tracks_load) return;
    if (lease_snapshot != nullptr &&
        lease_snapshot->version == version.load(std::memory_order_acquire)) {
      chooser->OnPeerChanged(*lease_snapshot, lease_index);
      return;
    }
    auto current = snapshot.load(std::memory_order_acquire);
    int slot = peer.slot();
    if (current && slot >= 0 && slot < static_cast<int>(current->raw.size()) &&
        current->raw[slot] == &peer) {
      chooser->OnPeerChanged(*current, slot);
    }
  }

  // After a lease gave its slot back (Peer::ReleaseLeaseSlot), so `peer`
  // may already be deleted: it is only compared, never dereferenced, unless
  // a snapshot holding it is found. `pinned` is a snapshot of ours the caller
  // keeps alive (or null); `index` is the peer's index in the snapshot of
  // `lease_version`, `slot` its slot read before the release.
  void OnRelease(const PeerSnapshot* pinned, const Peer* peer, int index,
                 std::uint64_t lease_version, int slot) {
    if (chooser_tracks_load) {
      std::shared_ptr<const PeerSnapshot> holder;
      const PeerSnapshot* current = pinned;
      if (current == nullptr || current->version != version.load(std::memory_order_acquire)) {
        holder = snapshot.load();
        current = holder.get();
      }
      if (current != nullptr) {
        const int at = current->version == lease_version ? index : slot;
        if (at >= 0 && at < static_cast<int>(current->raw.size()) && current->raw[at] == peer) {
          chooser->OnPeerChanged(*current, at);
        }
      }
    }
    // Dekker-style pairing, all seq_cst: Peer::ReleaseLeaseSlot's decrement
    // then this load, against AcquireSlow's waiters increment then
    // Peer::TryAcquire's load. Either the waiter sees the freed slot when it
    // probes, or we see it registered and wake it.
    if (waiters.load(std::memory_order_seq_cst) > 0) Wake();
  }

  void OnPeerStateChanged(Peer& peer) {
    PeerChanged(nullptr, -1, peer);
    Wake();
  }

  void OnHealthChanged(const std::string& peer_id) {
    auto current = snapshot.load(std::memory_order_acquire);
    if (current) {
      auto it = current->index_by_id.find(peer_id);
      if (it != current->index_by_id.end() && chooser_tracks_load) {
        chooser->OnPeerChanged(*current, it->second);
      }
    }
    Wake();
  }
};

// ------------------------------------------------------------------ lease

PeerLease& PeerLease::operator=(PeerLease&& other) noexcept {
  if (this != &other) {
    if (peer_) Release(core::StatusCode::kCancelled, core::Duration::zero());
    peer_ = other.peer_;
    owner_id_ = other.owner_id_;
    version_ = other.version_;
    index_ = other.index_;
    probe_ = other.probe_;
    other.peer_ = nullptr;
  }
  return *this;
}

void PeerLease::Release(core::StatusCode outcome, core::Duration latency) {
  Peer* peer = peer_;
  if (peer == nullptr) return;
  peer_ = nullptr;
  // Statistics and breaker first: our in-flight slot still keeps the peer alive.
  peer->RecordRelease(outcome, latency, probe_);
  // The coordinator's shared state must be alive after the slot is returned
  // (to wake waiters, update the chooser). Usually this thread's snapshot
  // cache holds a snapshot of that coordinator, which pins it at no cost.
  const SnapshotCacheEntry& entry = tls_snapshot_cache[owner_id_ % kCacheSlots];
  if (entry.id == owner_id_ && entry.snapshot != nullptr) {
    const PeerSnapshot* pinned = entry.snapshot.get();
    auto* shared = static_cast<CoordinatorShared*>(pinned->owner.get());
    const int slot = shared->chooser_tracks_load ? peer->slot() : -1;
    if (Peer::ReleaseLeaseSlot(peer)) peer = nullptr;  // our last touch of *peer
    shared->OnRelease(pinned, peer, index_, version_, slot);
    return;
  }
  // Released on a thread with no cached snapshot of this coordinator (or
  // after the coordinator is gone): take a strong reference, if any is left.
  auto owner = std::static_pointer_cast<CoordinatorShared>(peer->owner().lock());
  const int slot = peer->slot();
  if (Peer::ReleaseLeaseSlot(peer)) peer = nullptr;
  if (owner) owner->OnRelease(nullptr, peer, index_, version_, slot);
}

// ------------------------------------------------------------------ coordinator

absl::StatusOr<std::unique_ptr<PeerListCoordinator>> PeerListCoordinator::Create(
    PeerListCoordinatorOptions options, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics,
    std::shared_ptr<PeerLeaseHealthTracker> tracker) {
  absl::StatusOr<std::unique_ptr<PeerChooser>> chooser =
      options.chooser_factory ? options.chooser_factory()
                              : CreateChooser(options.chooser, options.chooser_options);
  if (!chooser.ok()) return chooser.status();
  if (*chooser == nullptr) return absl::InvalidArgumentError("chooser factory returned no chooser");
  if (!clock) clock = core::SystemClock::Shared();
  if (!metrics) metrics = core::MetricsRegistry::Default();
  auto shared = std::make_shared<CoordinatorShared>();
  shared->clock = std::move(clock);
  shared->metrics = std::move(metrics);
  shared->chooser = *std::move(chooser);
  shared->chooser_tracks_load = shared->chooser->tracks_load();
  return std::unique_ptr<PeerListCoordinator>(
      new PeerListCoordinator(std::move(options), std::move(shared), std::move(tracker)));
}

PeerListCoordinator::PeerListCoordinator(PeerListCoordinatorOptions options,
                                         std::shared_ptr<CoordinatorShared> shared,
                                         std::shared_ptr<PeerLeaseHealthTracker> tracker)
    : options_(std::move(options)), shared_(std::move(shared)), tracker_(std::move(tracker)) {
  if (!options_.service.empty()) tags_[kTagService] = options_.service;
  if (!options_.procedure.empty()) tags_[kTagProcedure] = options_.procedure;
  if (!options_.transport.empty()) tags_[kTagTransport] = options_.transport;
  shared_->pool_exhausted = &shared_->metrics->GetCounter(metric::kPoolExhausted, tags_);
  shared_->deadline_exceeded =
      &shared_->metrics->GetCounter(metric::kAcquireDeadlineExceeded, tags_);
  if (tracker_) {
    std::weak_ptr<CoordinatorShared> weak = shared_;
    tracker_listener_ = tracker_->AddListener([weak](const std::string& peer_id, bool) {
      if (auto shared = weak.lock()) shared->OnHealthChanged(peer_id);
    });
  }
  std::lock_guard lock(update_mu_);
  PublishLocked({});
}

PeerListCoordinator::~PeerListCoordinator() {
  if (tracker_) tracker_->RemoveListener(tracker_listener_);
  std::lock_guard lock(update_mu_);
  auto current = shared_->snapshot.load();
  if (current) {
    for (const auto& peer : current->peers) {
      peer->SetObserver(nullptr);
      peer->set_slot(-1);
    }
  }
  // Break the shared -> snapshot -> shared cycle; leases still holding a
  // snapshot keep the shared state alive until they release.
  shared_->snapshot.store(nullptr);
  shared_->version.fetch_add(1, std::memory_order_acq_rel);  // invalidate thread caches
  shared_->Wake();
}

void PeerListCoordinator::PublishLocked(std::vector<std::shared_ptr<Peer>> peers) {
  auto next = std::make_shared<PeerSnapshot>();
  next->version = shared_->version.load() + 1;
  next->peers = std::move(peers);
  for (int i = 0; i < static_cast<int>(next->peers.size()); ++i) {
    next->raw.push_back(next->peers[i].get());
    next->index_by_id.emplace(next->peers[i]->id(), i);
  }
  next->chooser_state = shared_->chooser->Build(next->raw);
  next->owner = shared_;
  for (int i = 0; i < static_cast<int>(next->raw.size()); ++i) next->raw[i]->set_slot(i);
  shared_->snapshot.store(std::move(next), std::memory_order_release);
  shared_->version.fetch_add(1, std::memory_order_acq_rel);
  shared_->Wake();
}

std::shared_ptr<Peer> PeerListCoordinator::MakePeerLocked(PeerDescriptor descriptor,
                                                          std::optional<PeerOptions> options) {
  auto peer = Peer::Create(std::move(descriptor), options.value_or(options_.peer_defaults),
                           shared_->clock, shared_->metrics, tags_);
  if (tracker_) peer->SetHealthHandle(tracker_->Handle(peer->id()));
  std::weak_ptr<CoordinatorShared> weak = shared_;
  peer->SetOwner(weak);
  peer->SetObserver([weak](Peer& changed) {
    if (auto shared = weak.lock()) shared->OnPeerStateChanged(changed);
  });
  return peer;
}

absl::StatusOr<std::shared_ptr<Peer>> PeerListCoordinator::AddPeer(
    PeerDescriptor descriptor, std::optional<PeerOptions> options) {
  if (descriptor.id.empty()) descriptor.id = descriptor.endpoint;
  if (descriptor.id.empty()) {
    return core::MakeStatus(core::StatusCode::kInvalidArgument, "peer needs an id or an endpoint",
                            "invalid-peer");
  }
  std::lock_guard lock(update_mu_);
  auto current = shared_->snapshot.load();
  if (current->index_by_id.count(descriptor.id)) {
    return core::MakeStatus(core::StatusCode::kAlreadyExists,
                            "peer '" + descriptor.id + "' is already in the list",
                            "duplicate-peer");
  }
  auto peer = MakePeerLocked(std::move(descriptor), std::move(options));
  auto peers = current->peers;
  peers.push_back(peer);
  PublishLocked(std::move(peers));
  return peer;
}

absl::Status PeerListCoordinator::RemovePeer(std::string_view peer_id) {
  std::lock_guard lock(update_mu_);
  auto current = shared_->snapshot.load();
  auto it = current->index_by_id.find(std::string(peer_id));
  if (it == current->index_by_id.end()) {
    return core::MakeStatus(core::StatusCode::kNotFound,
                            "peer '" + std::string(peer_id) + "' is not in the list",
                            "unknown-peer");
  }
  auto peers = current->peers;
  auto removed = peers[it->second];
  peers.erase(peers.begin() + it->second);
  removed->SetObserver(nullptr);
  removed->set_slot(-1);
  PublishLocked(std::move(peers));
  return absl::OkStatus();
}

absl::Status PeerListCoordinator::ReplacePeers(std::vector<PeerDescriptor> descriptors) {
  std::lock_guard lock(update_mu_);
  auto current = shared_->snapshot.load();
  std::vector<std::shared_ptr<Peer>> peers;
  std::set<std::string> wanted;
  for (auto& descriptor : descriptors) {
    if (descriptor.id.empty()) descriptor.id = descriptor.endpoint;
    if (!wanted.insert(descriptor.id).second) {
      return core::MakeStatus(core::StatusCode::kInvalidArgument,
                              "duplicate peer '" + descriptor.id + "'", "duplicate-peer");
    }
  }
  for (const auto& peer : current->peers) {
    if (wanted.count(peer->id())) {
      peers.push_back(peer);
    } else {
      peer->SetObserver(nullptr);
      peer->set_slot(-1);
    }
  }
  for (auto& descriptor : descriptors) {
    if (!current->index_by_id.count(descriptor.id)) {
      peers.push_back(MakePeerLocked(std::move(descriptor), std::nullopt));
    }
  }
  PublishLocked(std::move(peers));
  return absl::OkStatus();
}

absl::Status PeerListCoordinator::SetPeerStatus(std::string_view peer_id, PeerStatus status) {
  auto peer = FindPeer(peer_id);
  if (!peer) {
    return core::MakeStatus(core::StatusCode::kNotFound,
                            "peer '" + std::string(peer_id) + "' is not in the list",
                            "unknown-peer");
  }
  peer->SetStatus(status);  // the observer updates the chooser and wakes waiters
  return absl::OkStatus();
}

std::shared_ptr<Peer> PeerListCoordinator::FindPeer(std::string_view peer_id) const {
  auto current = shared_->snapshot.load();
  if (!current) return nullptr;
  auto it = current->index_by_id.find(std::string(peer_id));
  return it == current->index_by_id.end() ? nullptr : current->peers[it->second];
}

std::shared_ptr<const PeerSnapshot> PeerListCoordinator::snapshot() const {
  return shared_->snapshot.load();
}

std::vector<PeerState> PeerListCoordinator::PeerStates() const {
  std::vector<PeerState> out;
  auto current = shared_->snapshot.load();
  if (!current) return out;
  for (const auto& peer : current->peers) out.push_back(peer->Snapshot());
  return out;
}

int PeerListCoordinator::waiting() const { return shared_->waiters.load(); }

void PeerListCoordinator::Wake() { shared_->Wake(); }

PeerChooser& PeerListCoordinator::chooser() { return *shared_->chooser; }

absl::StatusOr<PeerLease> PeerListCoordinator::Acquire(const core::RequestMeta& meta) {
  const std::shared_ptr<const PeerSnapshot>& snapshot = shared_->LoadCached();
  if (!snapshot || snapshot->raw.empty()) {
    return core::MakeStatus(core::StatusCode::kUnavailable, "no peers registered",
                            "peer-list-empty");
  }
  std::optional<core::TimePoint> deadline;
  if (meta.deadline || meta.time_to_live) {  // read the clock only when it matters
    auto now = shared_->clock->Now();
    deadline = meta.EffectiveDeadline(now);
    if (deadline && *deadline <= now) {
      shared_->deadline_exceeded->Add(1);
      return core::MakeStatus(core::StatusCode::kDeadlineExceeded,
                              "deadline passed before a peer was leased", "peer-acquire-deadline");
    }
  }
  // Fast path: the chooser's pick.
  int index = shared_->chooser->Pick(*snapshot, meta);
  if (index >= 0) {
    Admission admission = snapshot->raw[index]->TryAcquire();
    if (admission.ok()) {
      return PeerLease(snapshot->raw[index], index, snapshot->version, shared_->id,
                       admission.probe);
    }
    if (shared_->chooser_tracks_load) shared_->chooser->OnPeerChanged(*snapshot, index);
  }
  return AcquireSlow(snapshot, meta, deadline, index);
}

std::optional<PeerLease> PeerListCoordinator::TryAcquireNow(const core::RequestMeta& meta) {
  const std::shared_ptr<const PeerSnapshot>& snapshot = shared_->LoadCached();
  if (!snapshot || snapshot->raw.empty()) return std::nullopt;
  if (meta.deadline || meta.time_to_live) {
    const auto now = shared_->clock->Now();
    const auto deadline = meta.EffectiveDeadline(now);
    if (deadline && *deadline <= now) return std::nullopt;  // Acquire counts it
  }
  const int index = shared_->chooser->Pick(*snapshot, meta);
  if (index < 0) return std::nullopt;
  Admission admission = snapshot->raw[index]->TryAcquire();
  if (!admission.ok()) {
    if (shared_->chooser_tracks_load) shared_->chooser->OnPeerChanged(*snapshot, index);
    return std::nullopt;
  }
  return PeerLease(snapshot->raw[index], index, snapshot->version, shared_->id, admission.probe);
}

absl::StatusOr<PeerLease> PeerListCoordinator::AcquireSlow(
    std::shared_ptr<const PeerSnapshot> snapshot, const core::RequestMeta& meta,
    std::optional<core::TimePoint> deadline, int tried) {
  CoordinatorShared& shared = *shared_;
  struct WaitRegistration {
    CoordinatorShared* shared = nullptr;
    std::optional<core::TimerId> timer;
    ~WaitRegistration() {
      if (!shared) return;
      if (timer) shared->clock->Cancel(*timer);
      shared->waiters.fetch_sub(1, std::memory_order_seq_cst);
    }
  } registration;
  auto expired = std::make_shared<std::atomic<bool>>(false);
  if (deadline) {
    // Register before probing (see OnRelease). The fast-path refusal happened
    // before registration, so that peer is probed again below.
    shared.waiters.fetch_add(1, std::memory_order_seq_cst);
    registration.shared = &shared;
    tried = -1;
  }
  std::vector<int> order;
  for (;;) {
    const std::uint64_t generation = shared.wake_generation.load(std::memory_order_seq_cst);
    shared.chooser->ProbeOrder(*snapshot, meta, tried, &order);
    for (int index : order) {
      if (index == tried) continue;  // refused a moment ago on the fast path
      Admission admission = snapshot->raw[index]->TryAcquire();
      if (admission.ok()) {
        if (shared.chooser_tracks_load) shared.chooser->OnPeerChanged(*snapshot, index);
        return PeerLease(snapshot->raw[index], index, snapshot->version, shared.id,
                         admission.probe);
      }
    }
    tried = -1;
    if (!deadline) {
      shared.pool_exhausted->Add(1);
      return core::MakeStatus(
          core::StatusCode::kResourceExhausted,
          "every peer refused the lease (" + std::to_string(snapshot->raw.size()) + " probed)",
          "peer-pool-exhausted");
    }
    if (!registration.timer) {
      // The wake-up at the deadline is a Clock timer, not a timed wait, so a
      // ManualClock decides when it fires. It holds only weak references.
      std::weak_ptr<CoordinatorShared> weak = shared_;
      registration.timer = shared.clock->ScheduleAt(*deadline, [weak, expired] {
        expired->store(true, std::memory_order_release);
        if (auto strong = weak.lock()) strong->Wake();
      });
    }
    {
      std::unique_lock lock(shared.wait_mu);
      shared.wait_cv.wait(lock, [&] {
        return expired->load(std::memory_order_acquire) ||
               shared.wake_generation.load(std::memory_order_seq_cst) != generation;
      });
    }
    if (expired->load(std::memory_order_acquire) || shared.clock->Now() >= *deadline) {
      shared.deadline_exceeded->Add(1);
      return core::MakeStatus(core::StatusCode::kDeadlineExceeded,
                              "deadline passed while waiting for a free peer",
                              "peer-acquire-deadline");
    }
    snapshot = shared.snapshot.load(std::memory_order_acquire);
    if (!snapshot || snapshot->raw.empty()) {
      return core::MakeStatus(core::StatusCode::kUnavailable,
                              "every peer left the list while waiting", "peer-list-empty");
    }
  }
}

}  // namespace omnirelay::peers
