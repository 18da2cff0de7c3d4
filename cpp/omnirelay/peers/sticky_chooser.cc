#include "omnirelay/peers/sticky_chooser.h"

#include <algorithm>
#include <optional>

namespace omnirelay::peers {
namespace {

// The snapshot's rotation order: peer indices sorted by id, so "the next
// instance" does not depend on the order peers joined.
class StickyState final : public ChooserState {
 public:
  std::vector<int> sorted;
};

// LastOutcome(): the acquiring thread's last refusal reason per chooser.
// Pick runs on the thread that called Acquire, so the gateway reads it right
// after a failed Acquire without the chooser keeping per-call state.
struct LastOutcomeCell {
  const StickyChooser* chooser = nullptr;
  StickyOutcome outcome = StickyOutcome::kInstance;
};
thread_local LastOutcomeCell tls_last_outcome;

bool Excluded(const core::RequestMeta& meta, std::string_view peer_id) {
  if (meta.headers.empty()) return false;
  for (const auto& [name, value] : meta.headers.entries()) {
    if (name == kStickyExcludeHeader && value == peer_id) return true;
  }
  return false;
}

bool AnyExcluded(const core::RequestMeta& meta) {
  for (const auto& entry : meta.headers.entries()) {
    if (entry.first == kStickyExcludeHeader) return true;
  }
  return false;
}

// The session key: the first value of `header` (already lower-case, as
// Headers stores names), read without Headers::Get's per-call lower-casing.
std::optional<std::string_view> KeyOf(const core::RequestMeta& meta, const std::string& header) {
  for (const auto& [name, value] : meta.headers.entries()) {
    if (name == header) return std::string_view(value);
  }
  return std::nullopt;
}

}  // namespace

absl::Status StickyStatus(StickyOutcome outcome, bool failed_any) {
  switch (outcome) {
    case StickyOutcome::kInstance:
      return absl::OkStatus();
    case StickyOutcome::kAtCapacity:
    case StickyOutcome::kBusy:
      return absl::ResourceExhaustedError(kAllInstancesBusy);
    case StickyOutcome::kNoInstances:
      return failed_any ? absl::UnavailableError(kBackendUnavailable)
                        : absl::ResourceExhaustedError(kNoAvailableInstances);
    case StickyOutcome::kUnavailable:
      return absl::UnavailableError(kBackendUnavailable);
  }
  return absl::UnavailableError(kBackendUnavailable);
}

StickyChooser::StickyChooser(const ChooserOptions& options)
    : header_(core::Headers::Normalize(options.sticky_header.empty() ? "session-id"
                                                                     : options.sticky_header)),
      occupancy_(std::max(0, options.sticky_occupancy)) {}

void StickyChooser::SetOutcome(StickyOutcome outcome) const {
  tls_last_outcome.chooser = this;
  tls_last_outcome.outcome = outcome;
}

StickyOutcome StickyChooser::LastOutcome() const {
  return tls_last_outcome.chooser == this ? tls_last_outcome.outcome : StickyOutcome::kInstance;
}

StickyOutcome StickyChooser::OutcomeWithoutPeers(const core::RequestMeta& meta) const {
  if (AnyExcluded(meta)) return StickyOutcome::kUnavailable;
  std::optional<std::string_view> key = KeyOf(meta, header_);
  if (!key || key->empty()) return StickyOutcome::kNoInstances;
  std::lock_guard lock(mu_);
  const bool had_peer =
      sessions_.find(*key) != sessions_.end() || lost_.find(std::string(*key)) != lost_.end();
  return had_peer ? StickyOutcome::kUnavailable : StickyOutcome::kNoInstances;
}

std::shared_ptr<ChooserState> StickyChooser::Build(const std::vector<Peer*>& peers) {
  auto state = std::make_shared<StickyState>();
  state->sorted.resize(peers.size());
  for (size_t i = 0; i < peers.size(); ++i) state->sorted[i] = static_cast<int>(i);
  std::sort(state->sorted.begin(), state->sorted.end(),
            [&peers](int a, int b) { return peers[a]->id() < peers[b]->id(); });
  // Bindings of peers that left (or came back at another endpoint) end here.
  std::unordered_map<std::string_view, std::string_view> endpoints;
  for (const Peer* peer : peers) endpoints.emplace(peer->id(), peer->descriptor().endpoint);
  std::vector<StickyEvent> events;
  {
    std::lock_guard lock(mu_);
    std::vector<std::string> gone;
    for (const auto& [session, binding] : sessions_) {
      auto it = endpoints.find(binding.peer_id);
      if (it == endpoints.end() || it->second != binding.endpoint) gone.push_back(session);
    }
    for (const auto& session : gone) {
      const std::string lost = sessions_.at(session).peer_id;
      UnbindLocked(session, StickyEvent::Reason::kLeft, &events);
      RememberLostLocked(session, lost);
    }
  }
  Fire(events);
  return state;
}

int StickyChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  std::optional<std::string_view> key = KeyOf(meta, header_);
  if (!key || key->empty()) return PickKeyless(snapshot, meta);
  return PickSession(snapshot, meta, *key);
}

void StickyChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta,
                               int first, std::vector<int>* order) {
  std::optional<std::string_view> key = KeyOf(meta, header_);
  if (!key || key->empty()) {
    // Stateless calls may go to any peer, as round-robin's would.
    PeerChooser::ProbeOrder(snapshot, meta, first, order);
    return;
  }
  order->clear();
  // A waiting Acquire probes again with first = -1: pick afresh (the
  // session may have been rebound, or a peer freed, meanwhile).
  const int index = first >= 0 ? first : PickSession(snapshot, meta, *key);
  if (index >= 0) order->push_back(index);
}

int StickyChooser::PickKeyless(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  const auto n = static_cast<std::uint64_t>(snapshot.raw.size());
  if (n == 0) {
    SetOutcome(AnyExcluded(meta) ? StickyOutcome::kUnavailable : StickyOutcome::kNoInstances);
    return -1;
  }
  const std::uint64_t position = cursor_.load(std::memory_order_relaxed);
  cursor_.store(position + 1, std::memory_order_relaxed);
  int fallback = -1;  // a pickable peer this call already tried
  bool any_eligible = false;
  for (std::uint64_t i = 0; i < n; ++i) {
    const auto index = static_cast<int>((position + i) % n);
    const Peer& peer = *snapshot.raw[index];
    if (!peer.IsEligible()) continue;
    any_eligible = true;
    if (peer.AtCapacity()) continue;
    if (Excluded(meta, peer.id())) {
      if (fallback < 0) fallback = index;
      continue;
    }
    SetOutcome(StickyOutcome::kInstance);
    return index;
  }
  // Every pickable peer failed in this call: a stateless call may try one
  // again (a single auth node with a transient connect failure deserves its
  // retry; the caller's attempts bound this).
  SetOutcome(fallback >= 0  ? StickyOutcome::kInstance
             : any_eligible ? StickyOutcome::kAtCapacity
                            : StickyOutcome::kUnavailable);
  return fallback;
}

int StickyChooser::PickSession(const PeerSnapshot& snapshot, const core::RequestMeta& meta,
                               std::string_view key) {
  const auto* state = static_cast<const StickyState*>(snapshot.chooser_state.get());
  std::vector<StickyEvent> events;
  int picked = -1;
  StickyOutcome outcome = StickyOutcome::kInstance;
  {
    std::lock_guard lock(mu_);
    if (auto it = sessions_.find(key); it != sessions_.end()) {
      const Binding& binding = it->second;
      auto at = snapshot.index_by_id.find(binding.peer_id);
      StickyEvent::Reason reason = StickyEvent::Reason::kLeft;
      if (at != snapshot.index_by_id.end() &&
          snapshot.raw[at->second]->descriptor().endpoint == binding.endpoint) {
        const Peer& peer = *snapshot.raw[at->second];
        if (Excluded(meta, binding.peer_id)) {
          reason = StickyEvent::Reason::kFailure;
        } else if (!peer.IsEligible()) {
          reason = StickyEvent::Reason::kIneligible;
        } else {
          // Its peer, even at the in-flight cap: the coordinator then says
          // busy, or waits for a slot when the call has a deadline.
          SetOutcome(peer.AtCapacity() ? StickyOutcome::kAtCapacity : StickyOutcome::kInstance);
          return at->second;
        }
      }
      // Bound to something no longer usable: the binding is over.
      const std::string session(key), lost = binding.peer_id;
      UnbindLocked(session, reason, &events);
      RememberLostLocked(session, lost);
    }
    std::string session(key);
    auto lost = lost_.find(session);
    const bool had_peer = lost != lost_.end();
    const size_t n = state == nullptr ? 0 : state->sorted.size();
    if (n == 0) {
      outcome =
          had_peer || AnyExcluded(meta) ? StickyOutcome::kUnavailable : StickyOutcome::kNoInstances;
    } else {
      // Rotation: start after the peer this session lost, else after the
      // last peer handed out (ids sorted).
      const std::string& after = had_peer ? lost->second : last_picked_;
      size_t start = 0;
      while (start < n && snapshot.raw[state->sorted[start]]->id() <= after) ++start;
      bool any_free = false;  // eligible, unexcluded, but occupied
      for (size_t k = 0; k < n && picked < 0; ++k) {
        const int index = state->sorted[(start + k) % n];
        const Peer& peer = *snapshot.raw[index];
        if (!peer.IsEligible() || Excluded(meta, peer.id())) continue;
        any_free = true;
        auto& holders = by_peer_[peer.id()];
        if (occupancy_ > 0 && holders.size() >= static_cast<size_t>(occupancy_)) continue;
        holders.push_back(session);
        sessions_[session] = Binding{peer.id(), peer.descriptor().endpoint};
        last_picked_ = peer.id();
        StickyEvent bound;
        bound.kind = StickyEvent::Kind::kBound;
        bound.session = session;
        bound.peer_id = peer.id();
        bound.transferred = had_peer;
        bound.bindings = sessions_.size();
        events.push_back(std::move(bound));
        if (had_peer) lost_.erase(lost);  // the order deque is pruned lazily
        picked = index;
      }
      if (picked < 0) {
        // Nothing left that this call has not seen fail, or nothing eligible:
        // the backend, not capacity, is the problem.
        outcome =
            !any_free || AnyExcluded(meta) ? StickyOutcome::kUnavailable : StickyOutcome::kBusy;
      } else if (snapshot.raw[picked]->AtCapacity()) {
        outcome = StickyOutcome::kAtCapacity;
      }
    }
  }
  SetOutcome(outcome);
  Fire(events);
  return picked;
}

std::vector<std::string> StickyChooser::ReportFailure(const std::string& peer_id) {
  std::vector<StickyEvent> events;
  std::vector<std::string> sessions;
  {
    std::lock_guard lock(mu_);
    auto it = by_peer_.find(peer_id);
    if (it != by_peer_.end()) sessions = it->second;
    for (const auto& session : sessions) {
      UnbindLocked(session, StickyEvent::Reason::kFailure, &events);
      RememberLostLocked(session, peer_id);
    }
  }
  Fire(events);
  return sessions;
}

void StickyChooser::UnbindLocked(const std::string& session, StickyEvent::Reason reason,
                                 std::vector<StickyEvent>* events) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  StickyEvent event;
  event.kind = StickyEvent::Kind::kUnbound;
  event.reason = reason;
  event.session = session;
  event.peer_id = it->second.peer_id;
  if (auto holders = by_peer_.find(event.peer_id); holders != by_peer_.end()) {
    auto& list = holders->second;
    list.erase(std::remove(list.begin(), list.end(), session), list.end());
    if (list.empty()) by_peer_.erase(holders);
  }
  sessions_.erase(it);
  event.bindings = sessions_.size();
  events->push_back(std::move(event));
}

void StickyChooser::RememberLostLocked(const std::string& session, const std::string& peer_id) {
  if (lost_.insert_or_assign(session, peer_id).second) lost_order_.push_back(session);
  while (lost_order_.size() > kLostMemory) {
    lost_.erase(lost_order_.front());
    lost_order_.pop_front();
  }
  // Entries erased by a later pick leave stale names in lost_order_; prune them
  // from the front so the deque does not grow without bound.
  while (!lost_order_.empty() && !lost_.count(lost_order_.front())) lost_order_.pop_front();
}

void StickyChooser::Fire(const std::vector<StickyEvent>& events) const {
  if (!listener_) return;
  for (const auto& event : events) listener_(event);
}

std::map<std::string, std::string> StickyChooser::bindings() const {
  std::lock_guard lock(mu_);
  std::map<std::string, std::string> out;
  for (const auto& [session, binding] : sessions_) out.emplace(session, binding.peer_id);
  return out;
}

size_t StickyChooser::binding_count() const {
  std::lock_guard lock(mu_);
  return sessions_.size();
}

}  // namespace omnirelay::peers
