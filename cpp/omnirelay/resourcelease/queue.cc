#include "omnirelay/resourcelease/queue.h"

#include <algorithm>

#include "omnirelay/resourcelease/metrics.h"

namespace omnirelay::resourcelease {

enum class ItemState { kPending, kActive, kDead };

struct Queue::Item {
  std::uint64_t id = 0;
  ItemPayload payload;
  ItemState state = ItemState::kPending;
  int attempts = 0;
  std::uint64_t token = 0;  // current lease's token (active) or the last one
  std::string owner;
  core::TimePoint enqueued_at{};
  core::TimePoint ready_at{};  // when it last became pending (queue wait)
  core::TimePoint leased_at{};
  core::TimePoint expires_at{};
  std::string last_error;
  Item* prev = nullptr;
  Item* next = nullptr;
};

struct Queue::Metrics {
  core::Counter* enqueued;
  core::Counter* leased;
  core::Counter* completed;
  core::Counter* failed;
  core::Counter* expired;
  core::Counter* dead_lettered;
  core::Counter* transitions;
  core::Histogram* queue_wait;
  core::Histogram* lease_hold;
  std::atomic<std::int64_t> pending{0};
  std::atomic<std::int64_t> active{0};
  std::atomic<std::int64_t> dead{0};
  std::atomic<std::int64_t> backpressure{0};
  core::ObservableHandle pending_handle;
  core::ObservableHandle active_handle;
  core::ObservableHandle dead_handle;
  core::ObservableHandle backpressure_handle;
};

namespace {

double Millis(core::Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

absl::Status Err(absl::StatusCode code, std::string message, std::string_view error_code) {
  return core::MakeStatus(code, message, error_code);
}

}  // namespace

std::string_view OpName(Op op) {
  switch (op) {
    case Op::kEnqueue:
      return "enqueue";
    case Op::kLease:
      return "lease";
    case Op::kHeartbeat:
      return "heartbeat";
    case Op::kComplete:
      return "complete";
    case Op::kFail:
      return "fail";
    case Op::kExpire:
      return "expire";
    case Op::kDeadLetter:
      return "dead-letter";
    case Op::kDrain:
      return "drain";
    case Op::kRestore:
      return "restore";
    case Op::kRequeue:
      return "requeue";
    case Op::kBackpressureOn:
      return "backpressure-on";
    case Op::kBackpressureOff:
      return "backpressure-off";
  }
  return "unknown";
}

absl::Status ValidateOptions(const QueueOptions& o) {
  if (o.lease_duration <= core::Duration::zero()) {
    return absl::InvalidArgumentError("leaseDuration must be positive");
  }
  if (o.max_attempts < 1) return absl::InvalidArgumentError("maxAttempts must be at least 1");
  if (o.high_watermark > 0 && o.low_watermark >= o.high_watermark) {
    return absl::InvalidArgumentError("lowWatermark must be below highWatermark");
  }
  if (o.capacity > 0 && o.high_watermark > o.capacity) {
    return absl::InvalidArgumentError("highWatermark must not exceed capacity");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Queue>> Queue::Create(
    QueueOptions options, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics) {
  if (auto s = ValidateOptions(options); !s.ok()) return s;
  if (!clock) return absl::InvalidArgumentError("clock is required");
  std::shared_ptr<Queue> queue(new Queue(std::move(options), std::move(clock), std::move(metrics)));
  queue->InitMetrics();
  return queue;
}

Queue::Queue(QueueOptions options, std::shared_ptr<core::Clock> clock,
             std::shared_ptr<core::MetricsRegistry> metrics)
    : options_(std::move(options)), clock_(std::move(clock)), metrics_(std::move(metrics)) {}

Queue::~Queue() {
  // Parked long polls learn that the queue is gone (their timers hold only
  // weak references and do nothing once it is).
  std::deque<Waiter> waiters;
  {
    std::lock_guard lock(mu_);
    waiters.swap(waiters_);
  }
  for (auto& w : waiters) {
    clock_->Cancel(w.timer);
    w.done(absl::UnavailableError("resourcelease queue '" + options_.name + "' stopped"));
  }
}

void Queue::InitMetrics() {
  if (!metrics_) return;
  const core::Tags tags = {{std::string(kNamespaceTag), options_.name}};
  m_ = std::make_unique<Metrics>();
  auto& r = *metrics_;
  m_->enqueued = &r.GetCounter(metric::kEnqueued, tags);
  m_->leased = &r.GetCounter(metric::kLeased, tags);
  m_->completed = &r.GetCounter(metric::kCompleted, tags);
  m_->failed = &r.GetCounter(metric::kFailed, tags);
  m_->expired = &r.GetCounter(metric::kExpired, tags);
  m_->dead_lettered = &r.GetCounter(metric::kDeadLettered, tags);
  m_->transitions = &r.GetCounter(metric::kBackpressureTransitions, tags);
  m_->queue_wait = &r.GetHistogram(metric::kQueueWait, tags);
  m_->lease_hold = &r.GetHistogram(metric::kLeaseHold, tags);
  Metrics* m = m_.get();
  m_->pending_handle = r.RegisterObservable(metric::kPending, tags, [m] {
    return static_cast<double>(m->pending.load(std::memory_order_relaxed));
  });
  m_->active_handle = r.RegisterObservable(metric::kActive, tags, [m] {
    return static_cast<double>(m->active.load(std::memory_order_relaxed));
  });
  m_->dead_handle = r.RegisterObservable(metric::kDeadLetterDepth, tags, [m] {
    return static_cast<double>(m->dead.load(std::memory_order_relaxed));
  });
  m_->backpressure_handle = r.RegisterObservable(metric::kBackpressureActive, tags, [m] {
    return static_cast<double>(m->backpressure.load(std::memory_order_relaxed));
  });
}

void Queue::SetObserver(MutationObserver observer) {
  std::lock_guard lock(mu_);
  observer_ = std::move(observer);
}

void Queue::AddBackpressureListener(BackpressureListener listener) {
  std::lock_guard lock(mu_);
  listeners_.push_back(std::move(listener));
}

// --- intrusive lists ---------------------------------------------------------

void Queue::PushBack(List& list, Item* item) {
  item->prev = list.tail;
  item->next = nullptr;
  if (list.tail) {
    list.tail->next = item;
  } else {
    list.head = item;
  }
  list.tail = item;
  ++list.size;
}

void Queue::Unlink(List& list, Item* item) {
  if (item->prev) {
    item->prev->next = item->next;
  } else {
    list.head = item->next;
  }
  if (item->next) {
    item->next->prev = item->prev;
  } else {
    list.tail = item->prev;
  }
  item->prev = item->next = nullptr;
  --list.size;
}

// --- helpers (mu_ held) ------------------------------------------------------

void Queue::EmitLocked(Op op, const Item* item, core::TimePoint now, std::string_view reason) {
  ++sequence_;
  if (!observer_) return;
  MutationEvent event;
  event.sequence = sequence_;
  event.op = op;
  event.at = now;
  event.reason = reason;
  if (item) {
    event.item_id = item->id;
    event.attempt = item->attempts;
    switch (op) {
      case Op::kLease:
      case Op::kHeartbeat:
      case Op::kComplete:
      case Op::kFail:
      case Op::kExpire:
        event.fencing_token = item->token;
        event.owner = item->owner;
        event.expires_at = item->expires_at;
        break;
      case Op::kDeadLetter:
        event.fencing_token = item->token;
        event.owner = item->owner;
        event.payload = &item->payload;
        break;
      default:
        event.payload = &item->payload;
        break;
    }
  }
  observer_(event);
}

void Queue::MakePendingLocked(Item* item) {
  item->state = ItemState::kPending;
  PushBack(pending_[item->payload.priority], item);
  ++pending_count_;
}

Queue::Item* Queue::PopPendingLocked() {
  if (pending_count_ == 0) return nullptr;
  for (int p = kMaxPriority; p >= kMinPriority; --p) {
    if (Item* item = pending_[p].head) {
      Unlink(pending_[p], item);
      --pending_count_;
      return item;
    }
  }
  return nullptr;
}

Lease Queue::LeaseLocked(Item* item, std::string_view owner, core::TimePoint now) {
  item->state = ItemState::kActive;
  item->owner.assign(owner.data(), owner.size());
  item->token = next_token_++;
  item->attempts += 1;
  item->leased_at = now;
  item->expires_at = now + options_.lease_duration;
  PushBack(active_, item);
  if (m_) {
    m_->leased->Add();
    m_->queue_wait->Record(Millis(now - item->ready_at));
  }
  EmitLocked(Op::kLease, item, now);
  if (!armed_expiry_) ArmExpiryTimerLocked();
  return Lease{.item_id = item->id,
               .fencing_token = item->token,
               .owner = item->owner,
               .attempt = item->attempts,
               .leased_at = now,
               .expires_at = item->expires_at,
               .payload = item->payload};
}

void Queue::RecordHold(const Item& item, core::TimePoint now) {
  if (m_) m_->lease_hold->Record(Millis(now - item.leased_at));
}

void Queue::EndAttemptLocked(Item* item, Op op, std::string_view reason, bool requeue,
                             core::TimePoint now) {
  Unlink(active_, item);
  item->last_error.assign(reason.data(), reason.size());
  if (op == Op::kExpire) {
    ++counters_.expired;
    if (m_) m_->expired->Add();
  } else {
    ++counters_.failed;
    if (m_) m_->failed->Add();
  }
  EmitLocked(op, item, now, reason);
  if (!requeue || item->attempts >= options_.max_attempts) {
    item->state = ItemState::kDead;
    PushBack(dead_, item);
    ++counters_.dead_lettered;
    if (m_) m_->dead_lettered->Add();
    EmitLocked(Op::kDeadLetter, item, now, reason);
    return;
  }
  item->ready_at = now;
  MakePendingLocked(item);
}

void Queue::ExpireDueLocked(core::TimePoint now) {
  while (active_.head && active_.head->expires_at <= now) {
    EndAttemptLocked(active_.head, Op::kExpire, "lease expired", /*requeue=*/true, now);
  }
}

void Queue::ArmExpiryTimerLocked() {
  if (!active_.head) {
    armed_expiry_.reset();
    return;
  }
  const core::TimePoint due = active_.head->expires_at;
  if (armed_expiry_ && *armed_expiry_ <= due) return;  // an earlier timer will re-arm
  armed_expiry_ = due;
  std::weak_ptr<Queue> weak = weak_from_this();
  clock_->ScheduleAt(due, [weak] {
    if (auto self = weak.lock()) self->OnExpiryTimer();
  });
}

void Queue::OnExpiryTimer() { ExpireDue(); }

void Queue::ExpireDue() {
  std::vector<Delivery> deliveries;
  {
    std::lock_guard lock(mu_);
    const auto now = clock_->Now();
    ExpireDueLocked(now);
    armed_expiry_.reset();
    ArmExpiryTimerLocked();
    FeedWaitersLocked(now, deliveries);
    UpdateBackpressureLocked(now);
  }
  Deliver(deliveries);
}

void Queue::FeedWaitersLocked(core::TimePoint now, std::vector<Delivery>& out) {
  while (!waiters_.empty() && pending_count_ > 0 && !drained_) {
    Waiter waiter = std::move(waiters_.front());
    waiters_.pop_front();
    clock_->Cancel(waiter.timer);  // never blocks; a firing timer finds no waiter
    Item* item = PopPendingLocked();
    out.emplace_back(std::move(waiter.done),
                     std::optional<Lease>(LeaseLocked(item, waiter.owner, now)));
  }
}

void Queue::Deliver(std::vector<Delivery>& deliveries) {
  for (auto& [done, result] : deliveries) done(std::move(result));
}

void Queue::UpdateBackpressureLocked(core::TimePoint now) {
  if (m_) {
    m_->pending.store(static_cast<std::int64_t>(pending_count_), std::memory_order_relaxed);
    m_->active.store(static_cast<std::int64_t>(active_.size), std::memory_order_relaxed);
    m_->dead.store(static_cast<std::int64_t>(dead_.size), std::memory_order_relaxed);
  }
  if (options_.high_watermark == 0) return;
  bool next = backpressure_;
  if (!backpressure_ && pending_count_ >= options_.high_watermark) next = true;
  if (backpressure_ && pending_count_ <= options_.low_watermark) next = false;
  if (next == backpressure_) return;
  backpressure_ = next;
  ++counters_.backpressure_transitions;
  if (m_) {
    m_->transitions->Add();
    m_->backpressure.store(next ? 1 : 0, std::memory_order_relaxed);
  }
  EmitLocked(next ? Op::kBackpressureOn : Op::kBackpressureOff, nullptr, now);
  BackpressureSignal signal{.queue = options_.name,
                            .active = next,
                            .pending = pending_count_,
                            .high_watermark = options_.high_watermark,
                            .low_watermark = options_.low_watermark,
                            .at = now};
  for (const auto& listener : listeners_) listener(signal);
}

void Queue::RememberCompletedLocked(const std::string& request_id) {
  const size_t retention = options_.completed_retention;
  if (retention == 0) return;
  if (!completed_ids_.insert(request_id).second) return;
  if (completed_ring_.size() < retention && completed_next_ == completed_ring_.size()) {
    completed_ring_.push_back(request_id);
    completed_next_ = completed_ring_.size() % retention;
    return;
  }
  std::string& slot = completed_ring_[completed_next_];
  completed_ids_.erase(slot);
  slot = request_id;
  completed_next_ = (completed_next_ + 1) % retention;
}

absl::StatusOr<Queue::Item*> Queue::FindLeasedLocked(std::uint64_t item_id, std::uint64_t token,
                                                     std::string_view owner, core::TimePoint now) {
  ExpireDueLocked(now);
  auto it = items_.find(item_id);
  if (it == items_.end()) {
    return Err(absl::StatusCode::kNotFound,
               "item " + std::to_string(item_id) + " is not in queue '" + options_.name +
                   "' (completed, drained or never enqueued)",
               kErrUnknownItem);
  }
  Item* item = it->second.get();
  if (item->state != ItemState::kActive || item->token != token) {
    return Err(absl::StatusCode::kFailedPrecondition,
               "stale fencing token " + std::to_string(token) + " for item " +
                   std::to_string(item_id) +
                   (item->state == ItemState::kActive
                        ? " (current lease has token " + std::to_string(item->token) + ")"
                        : std::string(" (item is not leased)")),
               kErrStaleToken);
  }
  if (item->owner != owner) {
    return Err(absl::StatusCode::kPermissionDenied,
               "item " + std::to_string(item_id) + " is leased by '" + item->owner + "', not '" +
                   std::string(owner) + "'",
               kErrNotOwner);
  }
  return item;
}

ItemRecord Queue::RecordOf(const Item& item) const {
  return ItemRecord{.item_id = item.id,
                    .payload = item.payload,
                    .attempts = item.attempts,
                    .last_token = item.token,
                    .enqueued_at = item.enqueued_at,
                    .last_error = item.last_error};
}

// --- operations --------------------------------------------------------------

absl::StatusOr<EnqueueResult> Queue::Enqueue(ItemPayload payload) {
  if (payload.priority < kMinPriority || payload.priority > kMaxPriority) {
    return Err(absl::StatusCode::kInvalidArgument,
               "priority " + std::to_string(payload.priority) + " is outside 0..9",
               kErrInvalidItem);
  }
  if (payload.body.size() > options_.max_body_bytes) {
    return Err(absl::StatusCode::kInvalidArgument,
               "body of " + std::to_string(payload.body.size()) + " bytes exceeds maxBodyBytes " +
                   std::to_string(options_.max_body_bytes),
               kErrBodyTooLarge);
  }
  std::vector<Delivery> deliveries;
  EnqueueResult result;
  {
    std::lock_guard lock(mu_);
    const auto now = clock_->Now();
    ExpireDueLocked(now);
    if (payload.request_id.empty()) {
      payload.request_id = options_.name + "-" + std::to_string(++request_counter_) + "-" +
                           std::to_string(now.time_since_epoch().count());
    } else {
      if (auto it = by_request_.find(payload.request_id); it != by_request_.end()) {
        const Item& existing = *it->second;
        return EnqueueResult{.item_id = existing.id,
                             .duplicate = true,
                             .request_id = payload.request_id,
                             .state = existing.state == ItemState::kPending  ? "pending"
                                      : existing.state == ItemState::kActive ? "active"
                                                                             : "dead-letter"};
      }
      if (completed_ids_.contains(payload.request_id)) {
        return EnqueueResult{.item_id = 0,
                             .duplicate = true,
                             .request_id = payload.request_id,
                             .state = "completed"};
      }
    }
    if (drained_) {
      return Err(absl::StatusCode::kUnavailable,
                 "queue '" + options_.name + "' is drained; restore it before enqueueing",
                 kErrDrained);
    }
    if (backpressure_) {
      return Err(absl::StatusCode::kResourceExhausted,
                 "queue '" + options_.name + "' is under backpressure (" +
                     std::to_string(pending_count_) + " pending >= high watermark " +
                     std::to_string(options_.high_watermark) + " until " +
                     std::to_string(options_.low_watermark) + ")",
                 kErrBackpressure);
    }
    if (options_.capacity > 0 && pending_count_ + active_.size >= options_.capacity) {
      return Err(
          absl::StatusCode::kResourceExhausted,
          "queue '" + options_.name + "' is at capacity " + std::to_string(options_.capacity),
          kErrFull);
    }
    auto owned = std::make_unique<Item>();
    Item* item = owned.get();
    item->id = next_item_id_++;
    item->payload = std::move(payload);
    item->enqueued_at = item->ready_at = now;
    items_.emplace(item->id, std::move(owned));
    by_request_.emplace(item->payload.request_id, item);
    ++counters_.enqueued;
    if (m_) m_->enqueued->Add();
    EmitLocked(Op::kEnqueue, item, now);
    MakePendingLocked(item);
    result = EnqueueResult{
        .item_id = item->id, .duplicate = false, .request_id = item->payload.request_id};
    FeedWaitersLocked(now, deliveries);
    result.state = item->state == ItemState::kPending ? "pending" : "active";
    UpdateBackpressureLocked(now);
  }
  Deliver(deliveries);
  return result;
}

absl::StatusOr<std::optional<Lease>> Queue::TryLease(std::string_view owner) {
  std::lock_guard lock(mu_);
  if (drained_) {
    return Err(absl::StatusCode::kUnavailable, "queue '" + options_.name + "' is drained",
               kErrDrained);
  }
  const auto now = clock_->Now();
  ExpireDueLocked(now);
  Item* item = PopPendingLocked();
  if (!item) {
    UpdateBackpressureLocked(now);
    return std::optional<Lease>();
  }
  Lease lease = LeaseLocked(item, owner, now);
  UpdateBackpressureLocked(now);
  return std::optional<Lease>(std::move(lease));
}

void Queue::LeaseAsync(std::string owner, core::Duration wait, LeaseCallback done) {
  absl::StatusOr<std::optional<Lease>> immediate;
  {
    std::lock_guard lock(mu_);
    const auto now = clock_->Now();
    if (drained_) {
      immediate = Err(absl::StatusCode::kUnavailable, "queue '" + options_.name + "' is drained",
                      kErrDrained);
    } else {
      ExpireDueLocked(now);
      if (Item* item = PopPendingLocked()) {
        immediate = std::optional<Lease>(LeaseLocked(item, owner, now));
      } else if (wait <= core::Duration::zero()) {
        immediate = std::optional<Lease>();
      } else {
        Waiter waiter{.id = next_waiter_id_++, .owner = std::move(owner), .done = std::move(done)};
        std::weak_ptr<Queue> weak = weak_from_this();
        const std::uint64_t id = waiter.id;
        waiter.timer = clock_->ScheduleAt(now + wait, [weak, id] {
          if (auto self = weak.lock()) self->OnWaiterTimeout(id);
        });
        waiters_.push_back(std::move(waiter));
        UpdateBackpressureLocked(now);
        return;
      }
      UpdateBackpressureLocked(now);
    }
  }
  done(std::move(immediate));
}

void Queue::OnWaiterTimeout(std::uint64_t waiter_id) {
  LeaseCallback done;
  {
    std::lock_guard lock(mu_);
    auto it = std::find_if(waiters_.begin(), waiters_.end(),
                           [&](const Waiter& w) { return w.id == waiter_id; });
    if (it == waiters_.end()) return;  // already served
    done = std::move(it->done);
    waiters_.erase(it);
  }
  done(std::optional<Lease>());
}

absl::StatusOr<core::TimePoint> Queue::Heartbeat(std::uint64_t item_id, std::uint64_t token,
                                                 std::string_view owner) {
  std::lock_guard lock(mu_);
  const auto now = clock_->Now();
  auto found = FindLeasedLocked(item_id, token, owner, now);
  if (!found.ok()) {
    UpdateBackpressureLocked(now);
    return found.status();
  }
  Item* item = *found;
  item->expires_at = now + options_.lease_duration;
  // Constant lease duration: the renewed lease expires last, so the active
  // list stays in expiry order by moving it to the back.
  Unlink(active_, item);
  PushBack(active_, item);
  EmitLocked(Op::kHeartbeat, item, now);
  return item->expires_at;
}

absl::Status Queue::Complete(std::uint64_t item_id, std::uint64_t token, std::string_view owner) {
  std::unique_ptr<Item> done;  // freed after unlock
  {
    std::lock_guard lock(mu_);
    const auto now = clock_->Now();
    auto found = FindLeasedLocked(item_id, token, owner, now);
    if (!found.ok()) {
      UpdateBackpressureLocked(now);
      return found.status();
    }
    Item* item = *found;
    Unlink(active_, item);
    RecordHold(*item, now);
    ++counters_.completed;
    if (m_) m_->completed->Add();
    EmitLocked(Op::kComplete, item, now);
    by_request_.erase(item->payload.request_id);
    RememberCompletedLocked(item->payload.request_id);
    auto it = items_.find(item_id);
    done = std::move(it->second);
    items_.erase(it);
    UpdateBackpressureLocked(now);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Queue::Fail(std::uint64_t item_id, std::uint64_t token,
                                        std::string_view owner, std::string_view error,
                                        bool requeue) {
  std::vector<Delivery> deliveries;
  std::string state;
  {
    std::lock_guard lock(mu_);
    const auto now = clock_->Now();
    auto found = FindLeasedLocked(item_id, token, owner, now);
    if (!found.ok()) {
      UpdateBackpressureLocked(now);
      return found.status();
    }
    Item* item = *found;
    RecordHold(*item, now);
    EndAttemptLocked(item, Op::kFail, error.empty() ? "failed" : error, requeue, now);
    state = item->state == ItemState::kDead ? "dead-letter" : "pending";
    FeedWaitersLocked(now, deliveries);
    if (item->state == ItemState::kActive) state = "active";
    UpdateBackpressureLocked(now);
  }
  Deliver(deliveries);
  return state;
}

std::vector<ItemRecord> Queue::Drain() {
  std::vector<ItemRecord> out;
  std::deque<Waiter> waiters;
  std::vector<std::unique_ptr<Item>> removed;
  {
    std::lock_guard lock(mu_);
    const auto now = clock_->Now();
    ExpireDueLocked(now);
    drained_ = true;
    out.reserve(pending_count_);
    while (Item* item = PopPendingLocked()) {
      out.push_back(RecordOf(*item));
      EmitLocked(Op::kDrain, item, now);
      by_request_.erase(item->payload.request_id);
      auto it = items_.find(item->id);
      removed.push_back(std::move(it->second));
      items_.erase(it);
    }
    waiters.swap(waiters_);
    UpdateBackpressureLocked(now);
  }
  for (auto& w : waiters) {
    clock_->Cancel(w.timer);
    w.done(Err(absl::StatusCode::kUnavailable, "queue '" + options_.name + "' was drained",
               kErrDrained));
  }
  return out;
}

absl::StatusOr<size_t> Queue::Restore(std::vector<ItemRecord> records) {
  for (const auto& r : records) {
    if (r.payload.priority < kMinPriority || r.payload.priority > kMaxPriority) {
      return Err(absl::StatusCode::kInvalidArgument,
                 "restored item " + std::to_string(r.item_id) + " has priority " +
                     std::to_string(r.payload.priority) + " outside 0..9",
                 kErrInvalidItem);
    }
    if (r.payload.request_id.empty()) {
      return Err(absl::StatusCode::kInvalidArgument,
                 "restored item " + std::to_string(r.item_id) + " has no requestId",
                 kErrInvalidItem);
    }
  }
  std::vector<Delivery> deliveries;
  size_t added = 0;
  {
    std::lock_guard lock(mu_);
    const auto now = clock_->Now();
    ExpireDueLocked(now);
    drained_ = false;
    for (auto& r : records) {
      if (by_request_.contains(r.payload.request_id) ||
          completed_ids_.contains(r.payload.request_id)) {
        continue;  // restoring twice must not duplicate work
      }
      auto owned = std::make_unique<Item>();
      Item* item = owned.get();
      item->id = next_item_id_++;
      item->payload = std::move(r.payload);
      item->attempts = r.attempts;
      item->token = r.last_token;
      item->last_error = std::move(r.last_error);
      item->enqueued_at = r.enqueued_at == core::TimePoint{} ? now : r.enqueued_at;
      item->ready_at = now;
      // Tokens keep growing per item across a drain/restore hop.
      next_token_ = std::max(next_token_, r.last_token + 1);
      items_.emplace(item->id, std::move(owned));
      by_request_.emplace(item->payload.request_id, item);
      EmitLocked(Op::kRestore, item, now);
      MakePendingLocked(item);
      ++added;
    }
    FeedWaitersLocked(now, deliveries);
    UpdateBackpressureLocked(now);
  }
  Deliver(deliveries);
  return added;
}

absl::Status Queue::Recover(RecoveredState state) {
  for (const auto* list : {&state.pending, &state.dead_letters}) {
    for (const auto& r : *list) {
      if (r.payload.priority < kMinPriority || r.payload.priority > kMaxPriority ||
          r.payload.request_id.empty() || r.item_id == 0) {
        return Err(absl::StatusCode::kInvalidArgument,
                   "recovered item " + std::to_string(r.item_id) +
                       " needs an item id, a requestId and a priority in 0..9",
                   kErrInvalidItem);
      }
    }
  }
  std::lock_guard lock(mu_);
  if (sequence_ != 0 || !items_.empty() || next_item_id_ != 1) {
    return absl::FailedPreconditionError("queue '" + options_.name +
                                         "' already has state: recover into a fresh queue");
  }
  const auto now = clock_->Now();
  sequence_ = state.sequence;
  next_token_ = std::max<std::uint64_t>(next_token_, state.token_floor + 1);
  std::uint64_t max_item = 0;
  auto add = [&](ItemRecord& r, bool dead) -> absl::Status {
    if (items_.contains(r.item_id)) {
      return Err(absl::StatusCode::kInvalidArgument,
                 "recovered item id " + std::to_string(r.item_id) + " appears twice",
                 kErrInvalidItem);
    }
    auto owned = std::make_unique<Item>();
    Item* item = owned.get();
    item->id = r.item_id;
    item->payload = std::move(r.payload);
    item->attempts = r.attempts;
    item->token = r.last_token;
    item->last_error = std::move(r.last_error);
    item->enqueued_at = r.enqueued_at == core::TimePoint{} ? now : r.enqueued_at;
    item->ready_at = now;
    next_token_ = std::max(next_token_, r.last_token + 1);
    max_item = std::max(max_item, r.item_id);
    items_.emplace(item->id, std::move(owned));
    by_request_.emplace(item->payload.request_id, item);
    if (dead) {
      item->state = ItemState::kDead;
      PushBack(dead_, item);
    } else {
      MakePendingLocked(item);
    }
    return absl::OkStatus();
  };
  for (auto& r : state.pending) {
    if (auto s = add(r, false); !s.ok()) return s;
  }
  for (auto& r : state.dead_letters) {
    if (auto s = add(r, true); !s.ok()) return s;
  }
  next_item_id_ = std::max({next_item_id_, state.next_item_id, max_item + 1});
  for (const auto& id : state.completed_request_ids) RememberCompletedLocked(id);
  drained_ = state.drained;
  UpdateBackpressureLocked(now);
  return absl::OkStatus();
}

void Queue::CancelWaiters() {
  std::deque<Waiter> waiters;
  {
    std::lock_guard lock(mu_);
    waiters.swap(waiters_);
  }
  for (auto& w : waiters) {
    clock_->Cancel(w.timer);
    w.done(std::optional<Lease>());
  }
}

void Queue::Resume() {
  std::lock_guard lock(mu_);
  drained_ = false;
}

std::vector<ItemRecord> Queue::DeadLetters() const {
  std::lock_guard lock(mu_);
  std::vector<ItemRecord> out;
  out.reserve(dead_.size);
  for (Item* item = dead_.head; item; item = item->next) out.push_back(RecordOf(*item));
  return out;
}

size_t Queue::RequeueDeadLetters(const std::vector<std::uint64_t>& item_ids) {
  std::vector<Delivery> deliveries;
  size_t moved = 0;
  {
    std::lock_guard lock(mu_);
    const auto now = clock_->Now();
    auto requeue = [&](Item* item) {
      Unlink(dead_, item);
      item->attempts = 0;
      item->ready_at = now;
      EmitLocked(Op::kRequeue, item, now);
      MakePendingLocked(item);
      ++moved;
    };
    if (item_ids.empty()) {
      while (dead_.head) requeue(dead_.head);
    } else {
      for (auto id : item_ids) {
        auto it = items_.find(id);
        if (it != items_.end() && it->second->state == ItemState::kDead) requeue(it->second.get());
      }
    }
    FeedWaitersLocked(now, deliveries);
    UpdateBackpressureLocked(now);
  }
  Deliver(deliveries);
  return moved;
}

std::vector<ItemRecord> Queue::Pending(size_t limit) const {
  std::lock_guard lock(mu_);
  std::vector<ItemRecord> out;
  for (int p = kMaxPriority; p >= kMinPriority && out.size() < limit; --p) {
    for (Item* item = pending_[p].head; item && out.size() < limit; item = item->next) {
      out.push_back(RecordOf(*item));
    }
  }
  return out;
}

std::vector<Lease> Queue::ActiveLeases() const {
  std::lock_guard lock(mu_);
  std::vector<Lease> out;
  for (Item* item = active_.head; item; item = item->next) {
    out.push_back(Lease{.item_id = item->id,
                        .fencing_token = item->token,
                        .owner = item->owner,
                        .attempt = item->attempts,
                        .leased_at = item->leased_at,
                        .expires_at = item->expires_at,
                        .payload = item->payload});
  }
  return out;
}

QueueStats Queue::Stats() const {
  std::lock_guard lock(mu_);
  QueueStats s = counters_;
  s.pending = pending_count_;
  s.active = active_.size;
  s.dead_letter = dead_.size;
  s.waiters = waiters_.size();
  s.backpressure = backpressure_;
  s.drained = drained_;
  s.sequence = sequence_;
  return s;
}

}  // namespace omnirelay::resourcelease
