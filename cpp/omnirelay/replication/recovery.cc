#include "omnirelay/replication/recovery.h"

#include <algorithm>
#include <chrono>

#include "omnirelay/core/status.h"
#include "omnirelay/replication/deterministic.h"

namespace omnirelay::replication {

absl::Status RecoveryFold::Apply(const ReplicationEvent& e) {
  if (e.sequence != last_sequence_ + 1) {
    return core::MakeStatus(absl::StatusCode::kFailedPrecondition,
                            "queue '" + e.queue + "': replayed sequence " +
                                std::to_string(e.sequence) + " does not follow " +
                                std::to_string(last_sequence_),
                            kErrOutOfOrder);
  }
  last_sequence_ = e.sequence;
  max_token_ = std::max(max_token_, e.fencing_token);
  max_item_ = std::max(max_item_, e.item_id);
  const core::TimePoint at = FromUnixMicros(e.occurred_at_us);
  auto make_pending = [&](ItemState& item) {
    item.state = ItemState::kPending;
    item.order = ++order_;
  };
  const std::string& op = e.op;
  if (op == "enqueue" || op == "restore" || op == "requeue") {
    if (!e.payload) {
      return absl::DataLossError("queue '" + e.queue + "' sequence " + std::to_string(e.sequence) +
                                 ": " + op + " event without its item");
    }
    auto& item = items_[e.item_id];
    if (op != "requeue" || item.record.item_id == 0) {
      item.record.item_id = e.item_id;
      item.record.payload = *e.payload;
      if (op == "enqueue") item.record.enqueued_at = at;
    }
    item.record.attempts = op == "requeue" ? 0 : e.attempt;
    if (op == "restore") item.record.last_token = std::max(item.record.last_token, e.fencing_token);
    make_pending(item);
    return absl::OkStatus();
  }
  if (op == "backpressure-on" || op == "backpressure-off" || op == "backpressure_on" ||
      op == "backpressure_off" || e.item_id == 0) {
    return absl::OkStatus();
  }
  auto it = items_.find(e.item_id);
  if (it == items_.end()) {
    return absl::DataLossError("queue '" + e.queue + "' sequence " + std::to_string(e.sequence) +
                               ": " + op + " of item " + std::to_string(e.item_id) +
                               " that the log never enqueued");
  }
  ItemState& item = it->second;
  item.record.last_token = std::max(item.record.last_token, e.fencing_token);
  if (op == "lease") {
    item.state = ItemState::kActive;
    item.record.attempts = e.attempt;
  } else if (op == "heartbeat") {
    // The lease goes on.
  } else if (op == "complete") {
    completed_.push_back(item.record.payload.request_id);
    items_.erase(it);
  } else if (op == "fail" || op == "expire") {
    item.record.attempts = e.attempt;
    item.record.last_error = e.reason;
    make_pending(item);
  } else if (op == "dead-letter") {
    item.state = ItemState::kDead;
    item.record.last_error = e.reason;
    item.order = ++order_;
  } else if (op == "drain") {
    // Handed to the operator who drained; a later restore brings it back.
    items_.erase(it);
  } else {
    return absl::DataLossError("queue '" + e.queue + "' sequence " + std::to_string(e.sequence) +
                               ": unknown op '" + op + "'");
  }
  return absl::OkStatus();
}

resourcelease::RecoveredState RecoveryFold::Finish() const {
  resourcelease::RecoveredState out;
  out.sequence = last_sequence_;
  out.token_floor = max_token_ + token_margin_;
  out.next_item_id = max_item_ + 1;
  std::vector<const ItemState*> pending;
  std::vector<const ItemState*> dead;
  for (const auto& [id, item] : items_) {
    (item.state == ItemState::kDead ? dead : pending).push_back(&item);
  }
  // Active leases died with the node: their items join the back of the queue
  // in the order they were leased (their order stamp is the last pending one;
  // lease events come after it, so FIFO among the survivors is kept).
  auto by_order = [](const ItemState* a, const ItemState* b) { return a->order < b->order; };
  std::sort(pending.begin(), pending.end(), by_order);
  std::sort(dead.begin(), dead.end(), by_order);
  for (const auto* item : pending) out.pending.push_back(item->record);
  for (const auto* item : dead) out.dead_letters.push_back(item->record);
  out.completed_request_ids = completed_;
  return out;
}

absl::StatusOr<ReplayReport> ReplayLog(Replicator& log, std::string_view queue,
                                       const std::vector<std::shared_ptr<ReplicationSink>>& sinks,
                                       RecoveryFold& fold,
                                       const DeterministicCoordinator* coordinator, size_t batch) {
  const auto start = std::chrono::steady_clock::now();
  ReplayReport report;
  report.queue = std::string(queue);
  const std::uint64_t hits0 = coordinator ? coordinator->hits() : 0;
  const std::uint64_t misses0 = coordinator ? coordinator->misses() : 0;
  std::vector<ReplicationEvent> pending;
  pending.reserve(batch);
  auto deliver = [&]() -> absl::Status {
    for (const auto& sink : sinks) {
      if (auto s = sink->ApplyBatch(pending); !s.ok()) {
        return absl::Status(s.code(), "replaying queue '" + std::string(queue) + "' into " +
                                          sink->name() + ": " + std::string(s.message()));
      }
    }
    pending.clear();
    return absl::OkStatus();
  };
  absl::Status read = log.Read(queue, 0, [&](const ReplicationEvent& event) -> absl::Status {
    if (auto s = fold.Apply(event); !s.ok()) return s;
    ++report.events;
    pending.push_back(event);
    pending.back().metadata[kReplayTag] = "true";
    if (pending.size() >= batch) return deliver();
    return absl::OkStatus();
  });
  if (!read.ok()) return read;
  if (!pending.empty()) {
    if (auto s = deliver(); !s.ok()) return s;
  }
  const auto state = fold.Finish();
  report.last_sequence = fold.last_sequence();
  report.pending = state.pending.size();
  report.dead_letters = state.dead_letters.size();
  report.completed = state.completed_request_ids.size();
  if (coordinator) {
    report.effects_recorded = coordinator->misses() - misses0;
    report.effects_skipped = coordinator->hits() - hits0;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace omnirelay::replication
