#include "omnirelay/coord/memory_backend.h"

#include <algorithm>

namespace omnirelay::coord {

std::shared_ptr<MemoryBackend> MemoryBackend::Create(std::shared_ptr<core::Clock> clock) {
  return std::shared_ptr<MemoryBackend>(new MemoryBackend(std::move(clock)));
}

MemoryBackend::~MemoryBackend() {
  std::lock_guard lock(mu_);
  for (auto& [id, lease] : leases_) clock_->Cancel(lease.timer);
}

core::Status MemoryBackend::CheckAvailableLocked() const {
  if (unavailable_) {
    return core::MakeStatus(core::StatusCode::kUnavailable, "memory store: unavailable (test hook)",
                            "coord-store-unavailable");
  }
  return core::Status();
}

void MemoryBackend::SetUnavailable(bool unavailable) {
  std::lock_guard lock(mu_);
  unavailable_ = unavailable;
}

void MemoryBackend::ScheduleExpiry(LeaseId id, LeaseState& lease) {
  if (lease.timer != 0) clock_->Cancel(lease.timer);
  const core::TimePoint due = lease.expires_at;
  std::weak_ptr<MemoryBackend> weak = weak_from_this();
  lease.timer = clock_->ScheduleAt(due, [weak, id, due] {
    if (auto self = weak.lock()) self->Expire(id, due);
  });
}

void MemoryBackend::Expire(LeaseId id, core::TimePoint due) {
  {
    std::lock_guard lock(mu_);
    auto it = leases_.find(id);
    // A renewal moved the deadline (and rescheduled): this timer is stale.
    if (it == leases_.end() || it->second.expires_at != due) return;
    DropLeaseLocked(id);
  }
  DeliverPending();
}

void MemoryBackend::DropLeaseLocked(LeaseId id) {
  leases_.erase(id);
  std::vector<WatchEvent> events;
  bool bumped = false;
  for (auto it = kv_.begin(); it != kv_.end();) {
    if (it->second.lease != id) {
      ++it;
      continue;
    }
    if (!bumped) {
      ++revision_;
      bumped = true;
    }
    WatchEvent event;
    event.type = WatchEvent::Type::kDelete;
    event.kv.key = it->first;
    event.kv.mod_revision = revision_;
    events.push_back(std::move(event));
    it = kv_.erase(it);
  }
  if (!events.empty()) pending_.push_back(std::move(events));
}

void MemoryBackend::DeliverPending() {
  std::unique_lock lock(mu_);
  if (delivering_) return;  // the thread already delivering will take ours too
  delivering_ = true;
  while (!pending_.empty()) {
    auto batch = std::move(pending_.front());
    pending_.pop_front();
    lock.unlock();
    watches_.Dispatch(batch);
    lock.lock();
  }
  delivering_ = false;
}

core::StatusOr<LeaseGrant> MemoryBackend::GrantLease(core::Duration ttl) {
  if (ttl <= core::Duration::zero()) {
    return core::MakeStatus(core::StatusCode::kInvalidArgument, "lease TTL must be positive");
  }
  std::lock_guard lock(mu_);
  if (auto status = CheckAvailableLocked(); !status.ok()) return status;
  const LeaseId id = next_lease_++;
  auto& lease = leases_[id];
  lease.ttl = ttl;
  lease.expires_at = clock_->Now() + ttl;
  ScheduleExpiry(id, lease);
  return LeaseGrant{id, ttl};
}

core::StatusOr<core::Duration> MemoryBackend::KeepAlive(LeaseId id) {
  std::lock_guard lock(mu_);
  if (auto status = CheckAvailableLocked(); !status.ok()) return status;
  auto it = leases_.find(id);
  if (it == leases_.end()) {
    return core::MakeStatus(core::StatusCode::kNotFound, "lease not found (expired or revoked)",
                            "lease-not-found");
  }
  it->second.expires_at = clock_->Now() + it->second.ttl;
  ScheduleExpiry(id, it->second);
  return it->second.ttl;
}

core::Status MemoryBackend::RevokeLease(LeaseId id) {
  {
    std::lock_guard lock(mu_);
    if (auto status = CheckAvailableLocked(); !status.ok()) return status;
    auto it = leases_.find(id);
    if (it == leases_.end()) return core::Status();
    clock_->Cancel(it->second.timer);
    DropLeaseLocked(id);
  }
  DeliverPending();
  return core::Status();
}

core::StatusOr<RangeResult> MemoryBackend::Range(std::string_view key, RangeOptions options) {
  std::lock_guard lock(mu_);
  if (auto status = CheckAvailableLocked(); !status.ok()) return status;
  RangeResult result;
  result.revision = revision_;
  if (!options.prefix) {
    auto it = kv_.find(key);
    if (it != kv_.end()) result.kvs.push_back(it->second);
    return result;
  }
  for (auto it = kv_.lower_bound(key); it != kv_.end() && it->first.starts_with(key); ++it) {
    result.kvs.push_back(it->second);
  }
  if (options.sort_by_create) {
    std::stable_sort(result.kvs.begin(), result.kvs.end(), [](const auto& a, const auto& b) {
      return a.create_revision < b.create_revision;
    });
  }
  if (options.limit > 0 && static_cast<std::int64_t>(result.kvs.size()) > options.limit) {
    result.kvs.resize(static_cast<size_t>(options.limit));
  }
  return result;
}

core::StatusOr<TxnResult> MemoryBackend::Txn(const std::vector<Compare>& compares,
                                             const std::vector<TxnOp>& ops) {
  Revision committed = 0;
  {
    std::lock_guard lock(mu_);
    if (auto status = CheckAvailableLocked(); !status.ok()) return status;
    for (const auto& compare : compares) {
      auto it = kv_.find(compare.key);
      Revision actual = 0;
      if (it != kv_.end()) {
        actual = compare.target == Compare::Target::kCreateRevision ? it->second.create_revision
                                                                    : it->second.mod_revision;
      }
      if (actual != compare.value) return TxnResult{false, revision_};
    }
    for (const auto& op : ops) {
      if (op.kind == TxnOp::Kind::kPut && op.lease != 0 && !leases_.contains(op.lease)) {
        return core::MakeStatus(core::StatusCode::kNotFound, "lease not found (expired or revoked)",
                                "lease-not-found");
      }
    }
    std::vector<WatchEvent> events;
    if (!ops.empty()) ++revision_;
    for (const auto& op : ops) {
      WatchEvent event;
      if (op.kind == TxnOp::Kind::kPut) {
        auto& kv = kv_[op.key];
        if (kv.create_revision == 0) {
          kv.key = op.key;
          kv.create_revision = revision_;
        }
        kv.value = op.value;
        kv.mod_revision = revision_;
        ++kv.version;
        kv.lease = op.lease;
        event.kv = kv;
      } else {
        if (kv_.erase(op.key) == 0) continue;
        event.type = WatchEvent::Type::kDelete;
        event.kv.key = op.key;
        event.kv.mod_revision = revision_;
      }
      events.push_back(std::move(event));
    }
    if (!events.empty()) pending_.push_back(std::move(events));
    committed = revision_;
  }
  DeliverPending();
  return TxnResult{true, committed};
}

core::StatusOr<WatchHandle> MemoryBackend::Watch(std::string_view prefix, WatchCallback callback) {
  {
    std::lock_guard lock(mu_);
    if (auto status = CheckAvailableLocked(); !status.ok()) return status;
  }
  // Events queued but not yet delivered happened before this call: a watch
  // registered now would see them, so deliver them first.
  DeliverPending();
  return watches_.Add(std::string(prefix), std::move(callback));
}

}  // namespace omnirelay::coord
