#pragma once
// In-process KvBackend for unit tests and the simulator.
//
// Lease expiry is a timer on the injected core::Clock: with a ManualClock a
// lease expires exactly when a test advances time past it (the expiry and its
// delete events run inside ManualClock::Advance on the advancing thread).
// Several LeadershipStores (one per simulated node) may share one backend.
//
// Watch delivery: events are queued in revision order under the state lock
// and delivered after it is released by whichever mutating thread finds no
// delivery in progress. In a single-threaded test the events of a mutation
// have therefore been delivered when the mutating call returns.
#include <deque>
#include <map>
#include <memory>

#include "omnirelay/coord/kv_backend.h"

namespace omnirelay::coord {

class MemoryBackend final : public KvBackend, public std::enable_shared_from_this<MemoryBackend> {
 public:
  static std::shared_ptr<MemoryBackend> Create(std::shared_ptr<core::Clock> clock);
  ~MemoryBackend() override;

  std::string_view kind() const override { return "memory"; }
  core::StatusOr<LeaseGrant> GrantLease(core::Duration ttl) override;
  core::StatusOr<core::Duration> KeepAlive(LeaseId lease) override;
  core::Status RevokeLease(LeaseId lease) override;
  core::StatusOr<RangeResult> Range(std::string_view key, RangeOptions options) override;
  core::StatusOr<TxnResult> Txn(const std::vector<Compare>& compares,
                                const std::vector<TxnOp>& ops) override;
  core::StatusOr<WatchHandle> Watch(std::string_view prefix, WatchCallback callback) override;

  // Test hook: makes every call fail with UNAVAILABLE (store unreachable)
  // while set; leases keep expiring on the clock meanwhile.
  void SetUnavailable(bool unavailable);

 private:
  explicit MemoryBackend(std::shared_ptr<core::Clock> clock) : clock_(std::move(clock)) {}
  struct LeaseState {
    core::Duration ttl{};
    core::TimePoint expires_at{};
    core::TimerId timer = 0;
  };
  void ScheduleExpiry(LeaseId id, LeaseState& lease);  // requires mu_
  void Expire(LeaseId id, core::TimePoint due);
  // Deletes the lease's keys at a new revision; requires mu_.
  void DropLeaseLocked(LeaseId id);
  void DeliverPending();
  core::Status CheckAvailableLocked() const;

  std::shared_ptr<core::Clock> clock_;
  mutable std::mutex mu_;
  Revision revision_ = 1;  // etcd starts at 1 too
  LeaseId next_lease_ = 0x1000;
  bool unavailable_ = false;
  std::map<LeaseId, LeaseState> leases_;
  std::map<std::string, KeyValue, std::less<>> kv_;
  std::deque<std::vector<WatchEvent>> pending_;
  bool delivering_ = false;
  WatchRegistry watches_;
};

}  // namespace omnirelay::coord
