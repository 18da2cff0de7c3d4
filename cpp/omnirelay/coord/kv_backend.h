#pragma once
// The storage seam under LeadershipStore: a small etcd-v3-shaped key-value
// store with leases, single-round transactions and prefix watches.
//
// Three implementations: MemoryBackend (tests, simulator; time from a
// core::Clock so ManualClock drives lease expiry), SqliteBackend (one database
// file shared by the processes of one host) and EtcdBackend (a real etcd over
// its v3 gRPC API). Elections, fencing and the typed KV surface are written
// once on top of this seam (leadership_store.h), so every backend gives the
// same guarantees as long as it keeps the contract below:
//   * one store-wide revision counter that only grows (also across restarts);
//     every successful mutating transaction bumps it once, and every key it
//     writes records that revision as mod_revision (and as create_revision
//     when the key is created);
//   * a key attached to a lease is deleted (with a delete event) when the
//     lease expires or is revoked;
//   * compares on a missing key see create_revision = mod_revision = 0;
//   * watch events are delivered in revision order, each at most once.
//
// Thread-safety: every method of every backend is thread-safe. Watch
// callbacks run on a backend-owned thread (memory: the thread whose mutation
// produced the events, or the clock's timer thread for expiries), one at a
// time per watch and in order; they may call back into the backend but must
// not block for long. Destroying a WatchHandle waits out a running callback
// and guarantees none starts afterwards (it may be destroyed from inside its
// own callback).
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/status.h"

namespace omnirelay::coord {

using LeaseId = std::int64_t;
using Revision = std::int64_t;

struct KeyValue {
  std::string key;
  std::string value;
  Revision create_revision = 0;
  Revision mod_revision = 0;
  std::int64_t version = 0;
  LeaseId lease = 0;
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  // For deletes: the key, and mod_revision = the deleting revision.
  KeyValue kv;
};

// An empty batch means "the watch was re-established after a failure; events
// may have been missed": consumers re-read the state they derive.
using WatchCallback = std::function<void(const std::vector<WatchEvent>& events)>;

// Keeps a watch alive; destruction (or Reset) cancels it. Move-only.
class WatchHandle {
 public:
  WatchHandle() = default;
  explicit WatchHandle(std::function<void()> cancel) : cancel_(std::move(cancel)) {}
  WatchHandle(WatchHandle&& other) noexcept : cancel_(std::move(other.cancel_)) {
    other.cancel_ = nullptr;
  }
  WatchHandle& operator=(WatchHandle&& other) noexcept {
    if (this != &other) {
      Reset();
      cancel_ = std::move(other.cancel_);
      other.cancel_ = nullptr;
    }
    return *this;
  }
  WatchHandle(const WatchHandle&) = delete;
  WatchHandle& operator=(const WatchHandle&) = delete;
  ~WatchHandle() { Reset(); }
  void Reset() {
    if (cancel_) {
      auto cancel = std::move(cancel_);
      cancel_ = nullptr;
      cancel();
    }
  }
  explicit operator bool() const { return static_cast<bool>(cancel_); }

 private:
  std::function<void()> cancel_;
};

struct LeaseGrant {
  LeaseId id = 0;
  core::Duration ttl{};  // what the store granted (etcd rounds up to whole seconds)
};

// Equality predicate of a transaction (etcd's Compare with result EQUAL).
struct Compare {
  enum class Target { kCreateRevision, kModRevision };
  std::string key;
  Target target = Target::kCreateRevision;
  Revision value = 0;
};

struct TxnOp {
  enum class Kind { kPut, kDelete };
  Kind kind = Kind::kPut;
  std::string key;
  std::string value;
  LeaseId lease = 0;  // puts only; 0 = no lease
};

struct TxnResult {
  bool succeeded = false;
  Revision revision = 0;  // store revision after the transaction
};

struct RangeResult {
  std::vector<KeyValue> kvs;
  Revision revision = 0;  // store revision the read saw
};

struct RangeOptions {
  bool prefix = false;          // every key starting with `key`
  bool sort_by_create = false;  // ascending create_revision (else ascending key)
  std::int64_t limit = 0;       // 0 = no limit
};

class KvBackend {
 public:
  virtual ~KvBackend() = default;
  virtual std::string_view kind() const = 0;  // "memory" | "sqlite" | "etcd"

  // Errors: UNAVAILABLE (store unreachable or busy), INVALID_ARGUMENT.
  virtual core::StatusOr<LeaseGrant> GrantLease(core::Duration ttl) = 0;
  // Renews for another full TTL; returns the TTL granted. NOT_FOUND when the
  // lease has expired or was revoked (its keys are gone or about to go).
  virtual core::StatusOr<core::Duration> KeepAlive(LeaseId lease) = 0;
  // Deletes the lease and its keys. Revoking an unknown lease is OK.
  virtual core::Status RevokeLease(LeaseId lease) = 0;

  virtual core::StatusOr<RangeResult> Range(std::string_view key, RangeOptions options) = 0;
  // Applies `ops` atomically if every compare holds; otherwise changes
  // nothing and returns succeeded = false. Ops naming a lease that no longer
  // exists fail the call with NOT_FOUND.
  virtual core::StatusOr<TxnResult> Txn(const std::vector<Compare>& compares,
                                        const std::vector<TxnOp>& ops) = 0;
  // Delivers every event on keys starting with `prefix` that happens after
  // this call returns.
  virtual core::StatusOr<WatchHandle> Watch(std::string_view prefix, WatchCallback callback) = 0;
};

// Fan-out of watch events to registered watches; shared by the backends.
// Thread-safety: all methods thread-safe; Dispatch must be called by one
// thread at a time (the backend's delivery order is the order of calls).
class WatchRegistry {
 public:
  struct Entry;
  // Registers a watch; events passed to Dispatch afterwards reach it.
  WatchHandle Add(std::string prefix, WatchCallback callback);
  void Dispatch(const std::vector<WatchEvent>& events);
  // Delivers an empty batch (resync) to every watch.
  void DispatchResync();
  bool empty() const;

 private:
  void Remove(const std::shared_ptr<Entry>& entry);
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Entry>> entries_;
};

// The smallest key greater than every key with this prefix (etcd range_end).
std::string PrefixEnd(std::string_view prefix);

}  // namespace omnirelay::coord
