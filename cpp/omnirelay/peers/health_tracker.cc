#include "omnirelay/peers/health_tracker.h"

#include <utility>

#include "omnirelay/core/request_meta.h"
#include "omnirelay/peers/peer_metrics.h"

namespace omnirelay::peers {

PeerLeaseHealthDiagnostics PeerLeaseHealthDiagnostics::FromSnapshots(
    std::vector<PeerLeaseHealthSnapshot> peers) {
  PeerLeaseHealthDiagnostics out;
  for (const auto& peer : peers) {
    if (peer.is_healthy) {
      ++out.eligible;
    } else {
      ++out.unhealthy;
    }
    out.pending_reassignments += peer.pending_reassignments;
  }
  out.peers = std::move(peers);
  return out;
}

nlohmann::json PeerLeaseHealthDiagnostics::ToJson() const {
  auto time_or_null = [](const std::optional<core::TimePoint>& time) -> nlohmann::json {
    if (!time) return nullptr;
    return core::FormatTimestamp(*time);
  };
  nlohmann::json list = nlohmann::json::array();
  for (const auto& peer : peers) {
    list.push_back({{"peerId", peer.peer_id},
                    {"isHealthy", peer.is_healthy},
                    {"tracked", peer.tracked},
                    {"lastHeartbeat", time_or_null(peer.last_heartbeat)},
                    {"lastDisconnect", time_or_null(peer.last_disconnect)},
                    {"disconnectReason", peer.disconnect_reason},
                    {"activeLeases", peer.active_leases},
                    {"pendingReassignments", peer.pending_reassignments},
                    {"metadata", peer.metadata}});
  }
  return {{"peers", std::move(list)},
          {"eligible", eligible},
          {"unhealthy", unhealthy},
          {"pendingReassignments", pending_reassignments}};
}

std::shared_ptr<PeerLeaseHealthTracker> PeerLeaseHealthTracker::Create(
    PeerLeaseHealthOptions options, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics) {
  return std::shared_ptr<PeerLeaseHealthTracker>(
      new PeerLeaseHealthTracker(options, std::move(clock), std::move(metrics)));
}

PeerLeaseHealthTracker::PeerLeaseHealthTracker(PeerLeaseHealthOptions options,
                                               std::shared_ptr<core::Clock> clock,
                                               std::shared_ptr<core::MetricsRegistry> metrics)
    : options_(options), clock_(std::move(clock)), metrics_(std::move(metrics)) {}

PeerLeaseHealthTracker::~PeerLeaseHealthTracker() {
  std::vector<core::TimerId> timers;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, entry] : entries_) {
      if (entry.timer) timers.push_back(*entry.timer);
    }
  }
  for (auto id : timers) clock_->Cancel(id);
}

PeerLeaseHealthTracker::Entry& PeerLeaseHealthTracker::EntryLocked(std::string_view peer_id) {
  auto it = entries_.find(peer_id);
  if (it == entries_.end()) {
    it = entries_.emplace(std::string(peer_id), Entry{}).first;
    it->second.handle = std::make_shared<PeerHealthHandle>(std::string(peer_id));
  }
  return it->second;
}

bool PeerLeaseHealthTracker::SetEligible(Entry& entry, bool eligible) {
  return entry.handle->eligible_.exchange(eligible, std::memory_order_acq_rel) != eligible;
}

void PeerLeaseHealthTracker::ArmTimerLocked(const std::string& peer_id, Entry& entry,
                                            core::TimePoint when) {
  std::weak_ptr<PeerLeaseHealthTracker> weak = weak_from_this();
  entry.timer = clock_->ScheduleAt(when, [weak, peer_id] {
    if (auto self = weak.lock()) self->OnGraceTimer(peer_id);
  });
}

void PeerLeaseHealthTracker::RecordHeartbeat(std::string_view peer_id) {
  bool changed;
  std::string id(peer_id);
  {
    std::lock_guard lock(mu_);
    Entry& entry = EntryLocked(peer_id);
    auto now = clock_->Now();
    entry.tracked = true;
    entry.last_heartbeat = now;
    changed = SetEligible(entry, true);
    // One pending timer per peer: when it fires it re-arms itself at the
    // latest heartbeat's expiry, so a heartbeat costs no Cancel/Schedule pair.
    if (!entry.timer) ArmTimerLocked(id, entry, now + options_.heartbeat_grace);
  }
  Count(metric::kLeaseHeartbeats, peer_id);
  if (changed) Notify(id, true);
}

void PeerLeaseHealthTracker::OnGraceTimer(const std::string& peer_id) {
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(peer_id);
    if (it == entries_.end()) return;
    Entry& entry = it->second;
    entry.timer.reset();
    if (!entry.last_heartbeat) return;
    auto expiry = *entry.last_heartbeat + options_.heartbeat_grace;
    if (clock_->Now() >= expiry) {
      changed = SetEligible(entry, false);
    } else {
      ArmTimerLocked(peer_id, entry, expiry);
    }
  }
  if (changed) Notify(peer_id, false);
}

void PeerLeaseHealthTracker::RecordDisconnect(std::string_view peer_id, std::string_view reason) {
  bool changed;
  {
    std::lock_guard lock(mu_);
    Entry& entry = EntryLocked(peer_id);
    entry.tracked = true;
    entry.last_disconnect = clock_->Now();
    entry.disconnect_reason = std::string(reason);
    // Leases held by a disconnected peer will be handed to someone else.
    entry.pending_reassignments += entry.active_leases;
    entry.active_leases = 0;
    changed = SetEligible(entry, false);
  }
  Count(metric::kLeaseDisconnects, peer_id);
  if (changed) Notify(std::string(peer_id), false);
}

void PeerLeaseHealthTracker::RecordLeaseAssigned(std::string_view peer_id) {
  {
    std::lock_guard lock(mu_);
    ++EntryLocked(peer_id).active_leases;
  }
  Count(metric::kLeaseAssignments, peer_id);
}

void PeerLeaseHealthTracker::RecordLeaseReleased(std::string_view peer_id, bool requeued) {
  std::lock_guard lock(mu_);
  Entry& entry = EntryLocked(peer_id);
  if (entry.active_leases > 0) --entry.active_leases;
  if (requeued) ++entry.pending_reassignments;
}

void PeerLeaseHealthTracker::RecordReassignmentCompleted(std::string_view peer_id) {
  std::lock_guard lock(mu_);
  Entry& entry = EntryLocked(peer_id);
  if (entry.pending_reassignments > 0) --entry.pending_reassignments;
}

void PeerLeaseHealthTracker::SetMetadata(std::string_view peer_id,
                                         const std::map<std::string, std::string>& labels) {
  std::lock_guard lock(mu_);
  Entry& entry = EntryLocked(peer_id);
  for (const auto& [key, value] : labels) entry.metadata[key] = value;
}

void PeerLeaseHealthTracker::Forget(std::string_view peer_id) {
  std::optional<core::TimerId> timer;
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(peer_id);
    if (it == entries_.end()) return;
    timer = it->second.timer;
    changed = SetEligible(it->second, true);  // handles still held by peers read "eligible"
    entries_.erase(it);
  }
  if (timer) clock_->Cancel(*timer);
  if (changed) Notify(std::string(peer_id), true);
}

bool PeerLeaseHealthTracker::IsPeerEligible(std::string_view peer_id) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(peer_id);
  return it == entries_.end() || it->second.handle->eligible();
}

std::shared_ptr<const PeerHealthHandle> PeerLeaseHealthTracker::Handle(std::string_view peer_id) {
  std::lock_guard lock(mu_);
  return EntryLocked(peer_id).handle;
}

std::vector<PeerLeaseHealthSnapshot> PeerLeaseHealthTracker::Snapshot() const {
  std::vector<PeerLeaseHealthSnapshot> out;
  {
    std::lock_guard lock(mu_);
    out.reserve(entries_.size());
    for (const auto& [id, entry] : entries_) {
      PeerLeaseHealthSnapshot snap;
      snap.peer_id = id;
      snap.tracked = entry.tracked;
      snap.is_healthy = entry.handle->eligible();
      snap.last_heartbeat = entry.last_heartbeat;
      snap.last_disconnect = entry.last_disconnect;
      snap.disconnect_reason = entry.disconnect_reason;
      snap.active_leases = entry.active_leases;
      snap.pending_reassignments = entry.pending_reassignments;
      snap.metadata = entry.metadata;
      out.push_back(std::move(snap));
    }
  }
  if (metrics_) {
    double healthy = 0, unhealthy = 0, pending = 0;
    for (const auto& snap : out) {
      (snap.is_healthy ? healthy : unhealthy) += 1;
      pending += static_cast<double>(snap.pending_reassignments);
    }
    metrics_->GetGauge(metric::kLeaseHealthy).Set(healthy);
    metrics_->GetGauge(metric::kLeaseUnhealthy).Set(unhealthy);
    metrics_->GetGauge(metric::kLeasePendingReassignments).Set(pending);
  }
  return out;
}

std::uint64_t PeerLeaseHealthTracker::AddListener(Listener listener) {
  std::lock_guard lock(mu_);
  std::uint64_t id = next_listener_++;
  listeners_.emplace(id, std::make_shared<const Listener>(std::move(listener)));
  return id;
}

void PeerLeaseHealthTracker::RemoveListener(std::uint64_t id) {
  std::lock_guard lock(mu_);
  listeners_.erase(id);
}

void PeerLeaseHealthTracker::Notify(const std::string& peer_id, bool eligible) {
  std::vector<std::shared_ptr<const Listener>> listeners;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, listener] : listeners_) listeners.push_back(listener);
  }
  for (const auto& listener : listeners) (*listener)(peer_id, eligible);
}

void PeerLeaseHealthTracker::Count(const core::MetricDescriptor& descriptor,
                                   std::string_view peer_id) {
  if (!metrics_) return;
  metrics_->GetCounter(descriptor, {{kTagPeer, std::string(peer_id)}}).Add(1);
}

}  // namespace omnirelay::peers
