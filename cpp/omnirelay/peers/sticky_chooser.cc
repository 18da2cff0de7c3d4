#include "omnirelay/peers/sticky_chooser.h"

#include <algorithm>
#include <atomic>

namespace omnirelay::peers {
namespace {
// Process-wide, so serials of different choosers (clusters) never collide.
uint64_t NextSerial() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}
StickyPick Outcome(StickyOutcome outcome) {
  StickyPick pick;
  pick.outcome = outcome;
  return pick;
}
}  // namespace

absl::Status StickyStatus(const StickyPick& pick, bool failed_any) {
  switch (pick.outcome) {
    case StickyOutcome::kInstance:
      return absl::OkStatus();
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

StickyMembershipChange StickyChooser::SetMembers(std::vector<StickyMember> members) {
  std::sort(members.begin(), members.end(),
            [](const StickyMember& a, const StickyMember& b) { return a.id < b.id; });
  members.erase(
      std::unique(members.begin(), members.end(),
                  [](const StickyMember& a, const StickyMember& b) { return a.id == b.id; }),
      members.end());
  StickyMembershipChange change;
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, const StickyMember*> next;
  for (const auto& m : members) next[m.id] = &m;
  for (const auto& old : members_) {
    auto it = next.find(old.id);
    if (it != next.end() && it->second->address == old.address) continue;
    change.removed.push_back(old);
    auto bound = id_to_session_.find(old.id);
    if (bound != id_to_session_.end()) {
      const std::string session = bound->second;
      change.unbound.push_back(session);
      UnbindLocked(session, old.id);
      RememberLostLocked(session, old.id);
    }
  }
  std::map<std::string, const StickyMember*> previous;
  for (const auto& m : members_) previous[m.id] = &m;
  for (auto& m : members) {
    auto it = previous.find(m.id);
    if (it == previous.end() || it->second->address != m.address) {
      m.serial = NextSerial();
      change.added.push_back(m);
    } else {
      m.serial = it->second->serial;
    }
  }
  members_ = std::move(members);
  return change;
}

StickyPick StickyChooser::PickSticky(const std::string& session,
                                     const std::set<std::string>& exclude) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = session_to_id_.find(session); it != session_to_id_.end()) {
    const std::string id = it->second;
    if (!exclude.count(id)) {
      for (const auto& m : members_) {
        if (m.id == id) return {StickyOutcome::kInstance, m, false, false};
      }
    }
    // Bound to something that is no longer usable: the binding is over.
    UnbindLocked(session, id);
    RememberLostLocked(session, id);
  }
  auto lost = lost_.find(session);
  const bool had_instance = lost != lost_.end();
  if (members_.empty()) {
    return Outcome(had_instance || !exclude.empty() ? StickyOutcome::kUnavailable
                                                    : StickyOutcome::kNoInstances);
  }
  // Rotation: start after the instance this session lost, else after the
  // last instance handed out.
  const std::string& after = had_instance ? lost->second : last_picked_;
  const size_t n = members_.size();
  size_t start = 0;
  while (start < n && members_[start].id <= after) ++start;
  for (size_t k = 0; k < n; ++k) {
    const StickyMember& m = members_[(start + k) % n];
    if (exclude.count(m.id) || id_to_session_.count(m.id)) continue;
    session_to_id_[session] = m.id;
    id_to_session_[m.id] = session;
    last_picked_ = m.id;
    if (had_instance) lost_.erase(lost);  // the order deque is pruned lazily
    return {StickyOutcome::kInstance, m, true, had_instance};
  }
  // Every member is excluded or bound. If this call already saw failures and
  // nothing unexcluded remains, the backend is unreachable rather than full.
  bool any_unexcluded = false;
  for (const auto& m : members_) any_unexcluded = any_unexcluded || !exclude.count(m.id);
  if (!exclude.empty()) return Outcome(StickyOutcome::kUnavailable);
  return Outcome(any_unexcluded ? StickyOutcome::kBusy : StickyOutcome::kUnavailable);
}

StickyPick StickyChooser::PickRoundRobin(const std::set<std::string>& exclude) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n = members_.size();
  if (n == 0) {
    return Outcome(exclude.empty() ? StickyOutcome::kNoInstances : StickyOutcome::kUnavailable);
  }
  for (size_t k = 0; k < n; ++k) {
    const StickyMember& m = members_[(round_robin_++) % n];
    if (!exclude.count(m.id)) return {StickyOutcome::kInstance, m, false, false};
  }
  // Every member failed in this call. A stateless cluster (no bindings to
  // protect) may try one again — a single auth node with a transient connect
  // failure deserves its retry; the caller's maxAttempts still bounds this.
  return {StickyOutcome::kInstance, members_[(round_robin_++) % n], false, false};
}

std::string StickyChooser::ReportFailure(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = id_to_session_.find(id);
  if (it == id_to_session_.end()) return "";
  const std::string session = it->second;
  UnbindLocked(session, id);
  RememberLostLocked(session, id);
  return session;
}

void StickyChooser::UnbindLocked(const std::string& session, const std::string& id) {
  session_to_id_.erase(session);
  if (auto it = id_to_session_.find(id); it != id_to_session_.end() && it->second == session) {
    id_to_session_.erase(it);
  }
}

void StickyChooser::RememberLostLocked(const std::string& session, const std::string& id) {
  if (lost_.insert_or_assign(session, id).second) lost_order_.push_back(session);
  while (lost_order_.size() > kLostMemory) {
    lost_.erase(lost_order_.front());
    lost_order_.pop_front();
  }
  // Entries erased by a later pick leave stale names in lost_order_; prune them
  // from the front so the deque does not grow without bound.
  while (!lost_order_.empty() && !lost_.count(lost_order_.front())) lost_order_.pop_front();
}

std::vector<StickyMember> StickyChooser::members() const {
  std::lock_guard<std::mutex> lock(mu_);
  return members_;
}

std::map<std::string, std::string> StickyChooser::bindings() const {
  std::lock_guard<std::mutex> lock(mu_);
  return session_to_id_;
}

size_t StickyChooser::binding_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return session_to_id_.size();
}

}  // namespace omnirelay::peers
