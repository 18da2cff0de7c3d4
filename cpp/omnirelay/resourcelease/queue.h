#pragma once
// ResourceLease: the leased work queue behind `resourcelease::*`.
//
// Producers enqueue work items that name a resource (ResourceType,
// ResourceId); workers lease them, heartbeat while they work, and complete or
// fail them. A lease that is not completed within its lease duration (no
// heartbeat) expires and the item goes back to pending, exactly like a failed
// attempt. After `max_attempts` attempts an item moves to the dead-letter
// list, which is kept (inspectable, requeue-able), never dropped.
//
// Safety rules (the property test checks them under random interleavings):
//   * an item has at most one live owner: every lease hands out a fresh
//     fencing token (strictly increasing per queue, hence per item), and
//     complete/heartbeat/fail with any other token are rejected
//     (FAILED_PRECONDITION, error code "stale-fencing-token");
//   * a lease whose expiry time has passed is dead even before the expiry
//     timer runs: every operation first expires due leases;
//   * the same RequestId enqueued twice is one item (the second enqueue
//     answers the first item, `duplicate = true`), also after it completed
//     (completed RequestIds are remembered up to `completed_retention`);
//   * every enqueued RequestId ends exactly once in completed or dead-letter.
//
// Ordering: pending items are served highest priority first, FIFO within a
// priority. A failed or expired item goes to the back of its priority.
// Drain() removes every pending item (in serving order) and stops leasing and
// enqueueing until Restore(), which appends the given items in order.
//
// Backpressure: when pending depth reaches `high_watermark` the queue enters
// backpressure (enqueue fails fast with RESOURCE_EXHAUSTED, error code
// "resourcelease-backpressure", and a retry-after hint); it leaves it when
// depth falls to `low_watermark`. Listeners see each transition once.
//
// Mutation events (for replication, issue 14): every state change is
// reported, in order, to the observer with a queue-wide sequence number, the
// op, the item, its fencing token and owner. The observer and the
// backpressure listeners run under the queue lock, so they see changes in
// exactly the order they were applied; they must be short, must not block
// and must not call back into the queue.
//
// Long-poll leases: LeaseAsync() either leases at once or parks a waiter (no
// thread) that the next enqueue/requeue/restore hands its item to, or that a
// clock timer completes with "no item" after the wait.
//
// Time: every timer (lease expiry, long-poll timeout) runs on the injected
// core::Clock, so tests drive it with ManualClock. The queue keeps one clock
// timer armed for the earliest lease expiry, not one per lease.
//
// Threading: all methods are thread-safe. One mutex guards the state and is
// held only for O(1) / O(log priorities) pointer work per call (hash lookups,
// intrusive list splices); callbacks to waiters run after it is released.
// Create() returns a shared_ptr because timers hold weak references.
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/core/status.h"

namespace omnirelay::resourcelease {

// Error-code strings attached to statuses (core::ErrorCode).
inline constexpr char kErrStaleToken[] = "stale-fencing-token";
inline constexpr char kErrNotOwner[] = "not-lease-owner";
inline constexpr char kErrUnknownItem[] = "unknown-item";
inline constexpr char kErrNotLeased[] = "item-not-leased";
inline constexpr char kErrBackpressure[] = "resourcelease-backpressure";
inline constexpr char kErrFull[] = "resourcelease-full";
inline constexpr char kErrDrained[] = "resourcelease-drained";
inline constexpr char kErrBodyTooLarge[] = "body-too-large";
inline constexpr char kErrInvalidItem[] = "invalid-item";

inline constexpr int kMinPriority = 0;
inline constexpr int kMaxPriority = 9;

struct ItemPayload {
  std::string resource_type{};
  std::string resource_id{};
  std::string partition_key{};
  std::map<std::string, std::string> attributes{};
  std::string body{};        // opaque bytes
  std::string request_id{};  // idempotency key; generated when empty
  int priority = 0;          // kMinPriority..kMaxPriority, higher first
};

// A pending or dead-lettered item as drain/list/restore carry it.
struct ItemRecord {
  std::uint64_t item_id = 0;
  ItemPayload payload{};
  int attempts = 0;               // leases handed out so far
  std::uint64_t last_token = 0;   // highest fencing token this item had
  core::TimePoint enqueued_at{};  // first enqueue
  std::string last_error{};       // from the last fail/expiry
};

// What a worker holds while it works on an item.
struct Lease {
  std::uint64_t item_id = 0;
  std::uint64_t fencing_token = 0;
  std::string owner{};
  int attempt = 0;  // 1 on the first lease
  core::TimePoint leased_at{};
  core::TimePoint expires_at{};
  ItemPayload payload{};
};

struct EnqueueResult {
  std::uint64_t item_id = 0;
  bool duplicate = false;  // the RequestId was known: no new item
  std::string request_id{};
  std::string state{};  // "pending" | "active" | "completed" | "dead-letter"
};

struct QueueOptions {
  std::string name = "default";  // namespace; tags metrics
  size_t capacity = 100000;      // pending + active items; 0 = unbounded
  core::Duration lease_duration = std::chrono::seconds(30);
  int max_attempts = 5;       // leases an item gets before it is dead-lettered
  size_t high_watermark = 0;  // 0 = no backpressure
  size_t low_watermark = 0;   // resume at or below (must be < high)
  core::Duration retry_after = std::chrono::seconds(1);  // hint with backpressure
  size_t max_body_bytes = 1 << 20;
  size_t completed_retention = 100000;  // completed RequestIds remembered for dedupe
};

// Validates option consistency; errors name the field (`highWatermark` ...).
absl::Status ValidateOptions(const QueueOptions& options);

enum class Op {
  kEnqueue,
  kLease,
  kHeartbeat,
  kComplete,
  kFail,        // failed attempt, requeued
  kExpire,      // lease expired, requeued
  kDeadLetter,  // moved to dead-letter (after fail/expire or fail without requeue)
  kDrain,       // removed from pending by Drain
  kRestore,     // added by Restore
  kRequeue,     // moved from dead-letter back to pending
  kBackpressureOn,
  kBackpressureOff,
};
std::string_view OpName(Op op);

// One applied mutation. `payload` points into queue state and is valid only
// during the callback (copy what you keep).
struct MutationEvent {
  std::uint64_t sequence = 0;  // queue-wide, 1, 2, 3, ... without gaps
  Op op = Op::kEnqueue;
  std::uint64_t item_id = 0;
  std::uint64_t fencing_token = 0;  // the lease's token (0 when none applies)
  std::string_view owner{};
  int attempt = 0;
  core::TimePoint at{};
  core::TimePoint expires_at{};          // lease/heartbeat
  std::string_view reason{};             // fail/expire/dead-letter reason
  const ItemPayload* payload = nullptr;  // enqueue/restore/drain/dead-letter/requeue
};
using MutationObserver = std::function<void(const MutationEvent&)>;

struct BackpressureSignal {
  std::string queue{};
  bool active = false;
  size_t pending = 0;
  size_t high_watermark = 0;
  size_t low_watermark = 0;
  core::TimePoint at{};
};
using BackpressureListener = std::function<void(const BackpressureSignal&)>;

struct QueueStats {
  size_t pending = 0;
  size_t active = 0;
  size_t dead_letter = 0;
  size_t waiters = 0;
  bool backpressure = false;
  bool drained = false;
  std::uint64_t enqueued = 0;
  std::uint64_t completed = 0;
  std::uint64_t failed = 0;
  std::uint64_t expired = 0;
  std::uint64_t dead_lettered = 0;
  std::uint64_t backpressure_transitions = 0;
  std::uint64_t sequence = 0;
};

// Result of a long poll: a lease, nothing within the wait (nullopt), or an error.
using LeaseCallback = std::function<void(absl::StatusOr<std::optional<Lease>>)>;

// The state a node rebuilt from its replication log (replication/recovery.h)
// and loads into a fresh queue with Queue::Recover().
struct RecoveredState {
  std::uint64_t sequence = 0;     // the log's highest sequence: the next event gets sequence + 1
  std::uint64_t token_floor = 0;  // every fencing token handed out from now on is above it
  std::uint64_t next_item_id = 1;
  std::vector<ItemRecord> pending;                 // serving order; item ids are kept
  std::vector<ItemRecord> dead_letters;            // item ids are kept
  std::vector<std::string> completed_request_ids;  // oldest first
  bool drained = false;
};

class Queue : public std::enable_shared_from_this<Queue> {
 public:
  // `metrics` may be null (no metrics, e.g. benchmarks).
  static absl::StatusOr<std::shared_ptr<Queue>> Create(
      QueueOptions options, std::shared_ptr<core::Clock> clock,
      std::shared_ptr<core::MetricsRegistry> metrics = nullptr);
  ~Queue();
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  const QueueOptions& options() const { return options_; }

  // Set before concurrent use (not synchronised with running operations).
  void SetObserver(MutationObserver observer);
  void AddBackpressureListener(BackpressureListener listener);

  // InvalidArgument (bad priority, body too large), ResourceExhausted (full,
  // backpressure), Unavailable (drained).
  absl::StatusOr<EnqueueResult> Enqueue(ItemPayload payload);

  // The next pending item for `owner`, or nullopt when none is pending.
  // Unavailable when drained.
  absl::StatusOr<std::optional<Lease>> TryLease(std::string_view owner);
  // Leases now, or waits up to `wait` (no thread parked) for an item.
  // `done` runs exactly once, on this thread when answered at once, else on
  // the enqueuing thread or the clock's timer thread.
  void LeaseAsync(std::string owner, core::Duration wait, LeaseCallback done);

  // Extends the lease to now + lease_duration; returns the new expiry.
  absl::StatusOr<core::TimePoint> Heartbeat(std::uint64_t item_id, std::uint64_t token,
                                            std::string_view owner);
  absl::Status Complete(std::uint64_t item_id, std::uint64_t token, std::string_view owner);
  // A failed attempt: requeued (or dead-lettered after max_attempts, or at
  // once when `requeue` is false). Returns the item's new state.
  absl::StatusOr<std::string> Fail(std::uint64_t item_id, std::uint64_t token,
                                   std::string_view owner, std::string_view error,
                                   bool requeue = true);

  // Removes and returns every pending item in serving order and stops
  // enqueue/lease until Restore(). Active leases stay valid; one that expires
  // while drained returns to pending (drain again to collect it).
  std::vector<ItemRecord> Drain();
  // Appends the items in order (new item ids; attempts, last error and the
  // fencing floor are kept) and reopens the queue. Items whose RequestId is
  // already known are skipped (counted in the result). Ignores capacity and
  // watermarks: a restore must never lose what a drain took.
  absl::StatusOr<size_t> Restore(std::vector<ItemRecord> items);
  // Loads a recovered state into a fresh queue (no item, sequence 0; call it
  // before serving). The loaded items emit no events: they are already in the
  // log the state came from; the sequence continues at state.sequence + 1.
  // FailedPrecondition when the queue is not fresh, InvalidArgument on a bad
  // record (priority out of range, missing RequestId, duplicate item id).
  absl::Status Recover(RecoveredState state);
  // Reopens a drained queue without adding anything.
  void Resume();
  // Answers every parked long poll now with "no item" (node shutdown: the
  // calls end cleanly before their transports go away).
  void CancelWaiters();

  std::vector<ItemRecord> DeadLetters() const;
  // Moves dead-lettered items (all when `item_ids` is empty) back to pending
  // with attempts reset. Returns how many moved.
  size_t RequeueDeadLetters(const std::vector<std::uint64_t>& item_ids = {});
  // Pending items in serving order (at most `limit`).
  std::vector<ItemRecord> Pending(size_t limit = SIZE_MAX) const;
  std::vector<Lease> ActiveLeases() const;

  QueueStats Stats() const;
  // Expires due leases now (the expiry timer does this on its own).
  void ExpireDue();

 private:
  struct Item;
  struct List {
    Item* head = nullptr;
    Item* tail = nullptr;
    size_t size = 0;
  };
  struct Waiter {
    std::uint64_t id;
    std::string owner;
    LeaseCallback done;
    core::TimerId timer = 0;
  };
  using Delivery = std::pair<LeaseCallback, absl::StatusOr<std::optional<Lease>>>;

  Queue(QueueOptions options, std::shared_ptr<core::Clock> clock,
        std::shared_ptr<core::MetricsRegistry> metrics);
  void InitMetrics();

  static void PushBack(List& list, Item* item);
  static void Unlink(List& list, Item* item);

  Lease LeaseLocked(Item* item, std::string_view owner, core::TimePoint now);
  Item* PopPendingLocked();
  void MakePendingLocked(Item* item);
  // Failed attempt or expiry of an active item: requeue or dead-letter.
  void EndAttemptLocked(Item* item, Op op, std::string_view reason, bool requeue,
                        core::TimePoint now);
  void ExpireDueLocked(core::TimePoint now);
  void ArmExpiryTimerLocked();
  void OnExpiryTimer();
  void OnWaiterTimeout(std::uint64_t waiter_id);
  // Hands pending items to parked waiters; deliveries run after unlock.
  void FeedWaitersLocked(core::TimePoint now, std::vector<Delivery>& out);
  void UpdateBackpressureLocked(core::TimePoint now);
  void RememberCompletedLocked(const std::string& request_id);
  absl::StatusOr<Item*> FindLeasedLocked(std::uint64_t item_id, std::uint64_t token,
                                         std::string_view owner, core::TimePoint now);
  void EmitLocked(Op op, const Item* item, core::TimePoint now, std::string_view reason = {});
  ItemRecord RecordOf(const Item& item) const;
  void RecordHold(const Item& item, core::TimePoint now);
  static void Deliver(std::vector<Delivery>& deliveries);

  const QueueOptions options_;
  const std::shared_ptr<core::Clock> clock_;
  const std::shared_ptr<core::MetricsRegistry> metrics_;
  MutationObserver observer_;
  std::vector<BackpressureListener> listeners_;

  mutable std::mutex mu_;
  // Open-addressing tables (absl): the cycle enqueue+lease+complete touches
  // them five times, and std::unordered_* node chasing dominated its cost.
  absl::flat_hash_map<std::uint64_t, std::unique_ptr<Item>> items_;  // pending+active+dead
  absl::flat_hash_map<std::string, Item*> by_request_;               // live items
  absl::flat_hash_set<std::string> completed_ids_;
  // Eviction ring of completed_ids_ (oldest at completed_next_ once full):
  // slots are reassigned in place, so steady state allocates nothing.
  std::vector<std::string> completed_ring_;
  size_t completed_next_ = 0;
  List pending_[kMaxPriority + 1];
  size_t pending_count_ = 0;
  List active_;  // in expiry order (lease duration is constant per queue)
  List dead_;
  std::deque<Waiter> waiters_;
  std::uint64_t next_item_id_ = 1;
  std::uint64_t next_token_ = 1;
  std::uint64_t next_waiter_id_ = 1;
  std::uint64_t sequence_ = 0;
  std::uint64_t request_counter_ = 0;  // for generated RequestIds
  bool backpressure_ = false;
  bool drained_ = false;
  std::optional<core::TimePoint> armed_expiry_;
  QueueStats counters_;

  // Metrics (null when no registry).
  struct Metrics;
  std::unique_ptr<Metrics> m_;
};

}  // namespace omnirelay::resourcelease
