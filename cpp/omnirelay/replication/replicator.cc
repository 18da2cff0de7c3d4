#include "omnirelay/replication/replicator.h"

#include "omnirelay/core/status.h"
#include "omnirelay/replication/metrics.h"
#include "omnirelay/resourcelease/metrics.h"

namespace omnirelay::replication {

absl::Status ReplicationSink::ApplyBatch(std::span<const ReplicationEvent> events) {
  for (const auto& e : events) {
    if (auto s = Apply(e); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// --- ReplicatorBase -----------------------------------------------------------

ReplicatorBase::ReplicatorBase(std::string name, std::string kind) {
  status_.name = std::move(name);
  status_.kind = std::move(kind);
}

absl::Status ReplicatorBase::AcceptLocked(const ReplicationEvent& event) {
  if (closed_) return absl::UnavailableError("replicator '" + status_.name + "' is closed");
  auto& pos = status_.queues[event.queue];
  if (event.sequence != pos.published + 1) {
    return core::MakeStatus(absl::StatusCode::kFailedPrecondition,
                            "queue '" + event.queue + "': event sequence " +
                                std::to_string(event.sequence) + " does not follow " +
                                std::to_string(pos.published),
                            kErrOutOfOrder);
  }
  pos.published = event.sequence;
  return absl::OkStatus();
}

void ReplicatorBase::SeedLocked(const std::string& queue, std::uint64_t last) {
  auto& pos = status_.queues[queue];
  pos.published = std::max(pos.published, last);
  pos.durable = std::max(pos.durable, last);
  pos.delivered = std::max(pos.delivered, last);
}

void ReplicatorBase::WhenDurable(std::string_view queue, std::uint64_t sequence,
                                 DurableCallback done) {
  absl::Status answer;
  {
    std::lock_guard lock(mu_);
    auto it = status_.queues.find(std::string(queue));
    const std::uint64_t durable = it == status_.queues.end() ? 0 : it->second.durable;
    if (durable >= sequence) {
      answer = absl::OkStatus();
    } else if (!status_.write_error.ok()) {
      answer = status_.write_error;
    } else if (closed_) {
      answer = absl::UnavailableError("replicator '" + status_.name + "' is closed");
    } else {
      auto w = waiting_.find(queue);
      if (w == waiting_.end())
        w = waiting_.emplace(std::string(queue), decltype(w->second){}).first;
      w->second.emplace(sequence, std::move(done));
      return;
    }
  }
  done(answer);
}

void ReplicatorBase::CommitDone(std::span<const ReplicationEvent> batch) {
  std::vector<DurableCallback> ready;
  std::vector<std::shared_ptr<ReplicationSink>> sinks;
  {
    std::lock_guard lock(mu_);
    status_.write_error = absl::OkStatus();
    ++status_.batches;
    status_.events_written += batch.size();
    for (const auto& e : batch) {
      auto& pos = status_.queues[e.queue];
      pos.durable = std::max(pos.durable, e.sequence);
    }
    for (auto& [queue, waits] : waiting_) {
      const std::uint64_t durable = status_.queues[queue].durable;
      auto end = waits.upper_bound(durable);
      for (auto it = waits.begin(); it != end; ++it) ready.push_back(std::move(it->second));
      waits.erase(waits.begin(), end);
    }
    sinks = sinks_;
  }
  cv_.notify_all();
  for (auto& done : ready) done(absl::OkStatus());
  for (auto& sink : sinks) {
    if (auto s = sink->ApplyBatch(batch); !s.ok()) {
      std::lock_guard lock(mu_);
      ++status_.sink_failures;
      status_.last_sink_error = sink->name() + ": " + std::string(s.message());
    }
  }
  {
    std::lock_guard lock(mu_);
    for (const auto& e : batch) {
      auto& pos = status_.queues[e.queue];
      pos.delivered = std::max(pos.delivered, e.sequence);
    }
  }
  cv_.notify_all();
}

void ReplicatorBase::WriteFailed(absl::Status error) {
  std::vector<DurableCallback> failed;
  absl::Status answer = core::MakeStatus(
      absl::StatusCode::kUnavailable,
      "replication log '" + status_.name + "' cannot be written: " + std::string(error.message()),
      kErrWriteFailed);
  {
    std::lock_guard lock(mu_);
    status_.write_error = answer;
    ++status_.write_failures;
    for (auto& [queue, waits] : waiting_) {
      for (auto& [seq, done] : waits) failed.push_back(std::move(done));
      waits.clear();
    }
  }
  cv_.notify_all();
  for (auto& done : failed) done(answer);
}

void ReplicatorBase::AddSink(std::shared_ptr<ReplicationSink> sink) {
  std::lock_guard lock(mu_);
  sinks_.push_back(std::move(sink));
}

ReplicatorStatus ReplicatorBase::Status() const {
  std::lock_guard lock(mu_);
  return status_;
}

// --- MemoryReplicator ----------------------------------------------------------

MemoryReplicator::MemoryReplicator(std::string name) : ReplicatorBase(std::move(name), "memory") {}

absl::Status MemoryReplicator::Publish(ReplicationEvent event) {
  {
    std::lock_guard lock(mu_);
    if (auto s = AcceptLocked(event); !s.ok()) return s;
    events_.push_back(event);
  }
  CommitDone(std::span<const ReplicationEvent>(&event, 1));
  return absl::OkStatus();
}

absl::StatusOr<std::uint64_t> MemoryReplicator::LastSequence(std::string_view queue) {
  std::lock_guard lock(mu_);
  auto it = status_.queues.find(std::string(queue));
  return it == status_.queues.end() ? 0 : it->second.durable;
}

absl::Status MemoryReplicator::Read(std::string_view queue, std::uint64_t after,
                                    const EventVisitor& visit) {
  std::vector<ReplicationEvent> copy;
  {
    std::lock_guard lock(mu_);
    for (const auto& e : events_) {
      if (e.queue == queue && e.sequence > after) copy.push_back(e);
    }
  }
  for (const auto& e : copy) {
    if (auto s = visit(e); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void MemoryReplicator::Close() {
  std::lock_guard lock(mu_);
  closed_ = true;
}

std::vector<ReplicationEvent> MemoryReplicator::Events() const {
  std::lock_guard lock(mu_);
  return events_;
}

// --- ShardedReplicator -----------------------------------------------------------

ShardedReplicator::ShardedReplicator(std::shared_ptr<Replicator> inner, std::string shard_id)
    : inner_(std::move(inner)), shard_id_(std::move(shard_id)) {}

absl::Status ShardedReplicator::Publish(ReplicationEvent event) {
  event.shard_id = shard_id_;
  event.metadata[kShardTag] = shard_id_;
  return inner_->Publish(std::move(event));
}

ReplicatorStatus ShardedReplicator::Status() const {
  ReplicatorStatus s = inner_->Status();
  s.kind = "sharded(" + s.kind + ")";
  s.name = s.name + "#" + shard_id_;
  return s;
}

// --- CompositeReplicator ---------------------------------------------------------

CompositeReplicator::CompositeReplicator(std::vector<std::shared_ptr<Replicator>> replicators)
    : replicators_(std::move(replicators)) {}

absl::Status CompositeReplicator::Publish(ReplicationEvent event) {
  // Every replicator gets the event even if an earlier one refused it: one
  // failing log must not starve the others. The first error is returned.
  absl::Status first;
  for (size_t i = 0; i < replicators_.size(); ++i) {
    auto s = i + 1 == replicators_.size() ? replicators_[i]->Publish(std::move(event))
                                          : replicators_[i]->Publish(event);
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

void CompositeReplicator::WhenDurable(std::string_view queue, std::uint64_t sequence,
                                      DurableCallback done) {
  if (replicators_.empty()) return done(absl::OkStatus());
  // Durable when every replicator says so; the first error answers.
  struct Join {
    std::mutex mu;
    size_t left;
    absl::Status status;
    DurableCallback done;
  };
  auto join = std::make_shared<Join>();
  join->left = replicators_.size();
  join->done = std::move(done);
  for (auto& r : replicators_) {
    r->WhenDurable(queue, sequence, [join](absl::Status s) {
      DurableCallback fire;
      absl::Status result;
      {
        std::lock_guard lock(join->mu);
        if (!s.ok() && join->status.ok()) join->status = s;
        if (--join->left == 0) {
          fire = std::move(join->done);
          result = join->status;
        }
      }
      if (fire) fire(result);
    });
  }
}

absl::Status CompositeReplicator::Flush() {
  absl::Status first;
  for (auto& r : replicators_) {
    if (auto s = r->Flush(); !s.ok() && first.ok()) first = s;
  }
  return first;
}

absl::StatusOr<std::uint64_t> CompositeReplicator::LastSequence(std::string_view queue) {
  if (replicators_.empty()) return 0;
  return replicators_.front()->LastSequence(queue);
}

absl::Status CompositeReplicator::Read(std::string_view queue, std::uint64_t after,
                                       const EventVisitor& visit) {
  if (replicators_.empty()) return absl::OkStatus();
  return replicators_.front()->Read(queue, after, visit);
}

void CompositeReplicator::AddSink(std::shared_ptr<ReplicationSink> sink) {
  if (!replicators_.empty()) replicators_.front()->AddSink(std::move(sink));
}

ReplicatorStatus CompositeReplicator::Status() const {
  ReplicatorStatus out;
  out.kind = "composite";
  for (const auto& r : replicators_) {
    auto s = r->Status();
    out.name += (out.name.empty() ? "" : "+") + s.name;
    if (out.write_error.ok()) out.write_error = s.write_error;
    out.write_failures += s.write_failures;
    out.sink_failures += s.sink_failures;
    if (!s.last_sink_error.empty()) out.last_sink_error = s.last_sink_error;
    out.batches += s.batches;
    out.events_written += s.events_written;
    for (const auto& [q, pos] : s.queues) {
      // The composite is as far as its slowest member.
      auto [it, inserted] = out.queues.emplace(q, pos);
      if (!inserted) {
        it->second.published = std::min(it->second.published, pos.published);
        it->second.durable = std::min(it->second.durable, pos.durable);
        it->second.delivered = std::min(it->second.delivered, pos.delivered);
      }
    }
  }
  return out;
}

void CompositeReplicator::Close() {
  for (auto& r : replicators_) r->Close();
}

// --- CheckpointingSink -----------------------------------------------------------

CheckpointingSink::CheckpointingSink(std::string name, std::shared_ptr<ReplicationSink> inner,
                                     std::shared_ptr<core::Clock> clock,
                                     std::shared_ptr<core::MetricsRegistry> metrics)
    : name_(std::move(name)),
      inner_(std::move(inner)),
      clock_(std::move(clock)),
      metrics_(std::move(metrics)) {}

void CheckpointingSink::Seed(const std::string& queue, std::uint64_t sequence) {
  std::lock_guard lock(mu_);
  auto& c = checkpoints_[queue];
  c.sink = name_;
  c.queue = queue;
  c.sequence = std::max(c.sequence, sequence);
}

std::uint64_t CheckpointingSink::Last(std::string_view queue) const {
  std::lock_guard lock(mu_);
  auto it = checkpoints_.find(queue);
  return it == checkpoints_.end() ? 0 : it->second.sequence;
}

std::vector<Checkpoint> CheckpointingSink::Checkpoints() const {
  std::lock_guard lock(mu_);
  std::vector<Checkpoint> out;
  for (const auto& [q, c] : checkpoints_) out.push_back(c);
  return out;
}

std::vector<const ReplicationEvent*> CheckpointingSink::FilterLocked(
    std::span<const ReplicationEvent> events) {
  std::vector<const ReplicationEvent*> fresh;
  fresh.reserve(events.size());
  const auto now = clock_->Now();
  for (const auto& e : events) {
    auto& c = checkpoints_[e.queue];
    c.sink = name_;
    c.queue = e.queue;
    if (!e.shard_id.empty()) c.shard = e.shard_id;
    if (e.sequence <= c.sequence) {
      ++c.duplicates;
      if (metrics_) {
        metrics_
            ->GetCounter(metric::kDuplicates, {{std::string(resourcelease::kNamespaceTag), e.queue},
                                               {"replication.sink", name_}})
            .Add();
      }
      continue;
    }
    c.sequence = e.sequence;
    ++c.applied;
    if (e.replay()) ++c.replayed;
    c.updated_at_us = ToUnixMicros(now);
    fresh.push_back(&e);
    if (metrics_) {
      const core::Tags tags = {{std::string(resourcelease::kNamespaceTag), e.queue},
                               {kShardTag, e.shard_id},
                               {kReplayTag, e.replay() ? "true" : "false"},
                               {"replication.sink", name_}};
      metrics_->GetCounter(metric::kEvents, tags).Add();
      if (!e.replay()) {
        // Lag of live events only: a replayed event's age is the downtime.
        const double lag_ms = static_cast<double>(ToUnixMicros(now) - e.occurred_at_us) / 1000.0;
        metrics_
            ->GetHistogram(metric::kLag, {{std::string(resourcelease::kNamespaceTag), e.queue},
                                          {kShardTag, e.shard_id}})
            .Record(std::max(0.0, lag_ms));
      }
    }
  }
  return fresh;
}

absl::Status CheckpointingSink::Apply(const ReplicationEvent& event) {
  return ApplyBatch(std::span<const ReplicationEvent>(&event, 1));
}

absl::Status CheckpointingSink::ApplyBatch(std::span<const ReplicationEvent> events) {
  // Serialised: the checkpoint must advance in the order the inner sink
  // applies, so concurrent callers cannot interleave a batch.
  std::lock_guard lock(mu_);
  // A failed inner sink leaves the checkpoints where they were, so the same
  // events are applied again on the next delivery or replay.
  std::map<std::string, Checkpoint, std::less<>> before;
  if (inner_) {
    for (const auto& e : events) {
      if (!before.contains(e.queue)) before[e.queue] = checkpoints_[e.queue];
    }
  }
  auto fresh = FilterLocked(events);
  if (!inner_ || fresh.empty()) return absl::OkStatus();
  absl::Status s;
  if (fresh.size() == events.size()) {
    s = inner_->ApplyBatch(events);
  } else {
    std::vector<ReplicationEvent> copy;
    copy.reserve(fresh.size());
    for (const auto* e : fresh) copy.push_back(*e);
    s = inner_->ApplyBatch(copy);
  }
  if (!s.ok()) {
    for (auto& [q, c] : before) checkpoints_[q] = c;
  }
  return s;
}

// --- RecordingSink ----------------------------------------------------------------

absl::Status RecordingSink::Apply(const ReplicationEvent& event) {
  std::lock_guard lock(mu_);
  events_.push_back(event);
  return absl::OkStatus();
}

std::vector<ReplicationEvent> RecordingSink::Events() const {
  std::lock_guard lock(mu_);
  return events_;
}

}  // namespace omnirelay::replication
