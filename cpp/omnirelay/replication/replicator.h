#pragma once
// Replicators: where a queue's ordered mutation stream goes.
//
// A Replicator takes every ReplicationEvent of one or more queues in sequence
// order (Publish, called from the queue's observer under the queue's lock, so
// it never blocks on I/O), makes it durable its own way (memory, a SQLite log,
// immutable segment files), and then hands it to its sinks in order. Durable
// replicators also read their log back (Read) for recovery and report the
// highest durable sequence per queue (LastSequence) to resume after restart.
//
// Ordering: per queue, sequences must follow each other without gaps
// (1, 2, 3, ... or, after recovery, last + 1, ...). Publish rejects a gap or
// a sequence that was already published (FailedPrecondition, error code
// "replication-out-of-order"): a replicator never writes a log with holes.
//
// Durability acknowledgement: WhenDurable(queue, sequence, done) runs `done`
// once that event (and so every earlier one of its queue) is durable: inline
// when it already is, otherwise on the replicator's writer thread. While the
// log cannot be written (disk full, I/O error) every waiting and new
// WhenDurable gets that error (UNAVAILABLE, error code
// "replication-write-failed"): the node stops acknowledging writes. The
// events stay buffered and the writer retries; when a write succeeds again
// acknowledgements resume. Nothing is dropped.
//
// Corruption: Read verifies each record's checksum, that its sequence is the
// next one, and that it decodes; the first bad record ends the read with
// DATA_LOSS naming the queue and sequence (and file or table) — never skipped.
//
// Sinks see each event once it is durable, in order, from one thread at a
// time (the writer thread; for the memory replicator, the publishing thread).
// A sink's error is counted and reported in Status(), never retried: sinks
// are downstream of the log, which stays the source of truth for replay.
//
// Thread-safety: every method is thread-safe.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/replication/event.h"

namespace omnirelay::replication {

inline constexpr char kErrOutOfOrder[] = "replication-out-of-order";
inline constexpr char kErrWriteFailed[] = "replication-write-failed";
inline constexpr char kErrCorrupt[] = "replication-log-corrupt";

class ReplicationSink {
 public:
  virtual ~ReplicationSink() = default;
  virtual std::string name() const = 0;
  virtual absl::Status Apply(const ReplicationEvent& event) = 0;
  // A run of consecutive events (a committed batch). Default: Apply each,
  // stopping at the first error.
  virtual absl::Status ApplyBatch(std::span<const ReplicationEvent> events);
};

using DurableCallback = std::function<void(absl::Status)>;
using EventVisitor = std::function<absl::Status(const ReplicationEvent&)>;

struct QueuePosition {
  std::uint64_t published = 0;  // highest sequence accepted by Publish
  std::uint64_t durable = 0;    // highest sequence durable in the log
  std::uint64_t delivered = 0;  // highest sequence handed to every sink
};

struct ReplicatorStatus {
  std::string name;
  std::string kind;  // memory | sqlite | file | sharded | composite
  std::map<std::string, QueuePosition> queues;
  absl::Status write_error;  // OK, or the error that currently stops acknowledgements
  std::uint64_t write_failures = 0;
  std::uint64_t sink_failures = 0;
  std::string last_sink_error;
  std::uint64_t batches = 0;  // commits (group commits)
  std::uint64_t events_written = 0;
  // CPU time the writer thread spent writing and delivering (batching
  // replicators): capacity = events_written / writer_cpu, whatever the load.
  std::uint64_t writer_cpu_us = 0;
};

class Replicator {
 public:
  virtual ~Replicator() = default;
  virtual absl::Status Publish(ReplicationEvent event) = 0;
  virtual void WhenDurable(std::string_view queue, std::uint64_t sequence,
                           DurableCallback done) = 0;
  // Blocks until everything published so far is durable and delivered to
  // the sinks (OK), or the log failed (its error).
  virtual absl::Status Flush() = 0;
  // Highest durable sequence of `queue` (0: none).
  virtual absl::StatusOr<std::uint64_t> LastSequence(std::string_view queue) = 0;
  // Visits the durable events of `queue` with sequence > `after`, in order.
  // A visitor error ends the read and is returned.
  virtual absl::Status Read(std::string_view queue, std::uint64_t after,
                            const EventVisitor& visit) = 0;
  virtual void AddSink(std::shared_ptr<ReplicationSink> sink) = 0;
  virtual ReplicatorStatus Status() const = 0;
  // Writes what is buffered (best effort), stops the writer; Publish then
  // answers UNAVAILABLE. Idempotent.
  virtual void Close() = 0;
};

// Shared bookkeeping of every concrete replicator: sequence checks, durable
// positions, waiting acknowledgements, sinks. Subclasses call the *Locked
// helpers under mu_.
class ReplicatorBase : public Replicator {
 public:
  void WhenDurable(std::string_view queue, std::uint64_t sequence, DurableCallback done) override;
  void AddSink(std::shared_ptr<ReplicationSink> sink) override;
  ReplicatorStatus Status() const override;

 protected:
  ReplicatorBase(std::string name, std::string kind);
  // Checks continuity and records the event as published (mu_ held).
  absl::Status AcceptLocked(const ReplicationEvent& event);
  // Seeds a queue's position from the log (construction/restart).
  void SeedLocked(const std::string& queue, std::uint64_t last);
  // Marks a committed batch durable, then runs its acknowledgements and
  // sinks (takes mu_ itself; call without it).
  void CommitDone(std::span<const ReplicationEvent> batch);
  // Records a write error: fails every waiting acknowledgement (takes mu_).
  void WriteFailed(absl::Status error);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  ReplicatorStatus status_;
  bool closed_ = false;

 private:
  std::vector<std::shared_ptr<ReplicationSink>> sinks_;
  // queue -> sequence -> waiting acknowledgements
  std::map<std::string, std::multimap<std::uint64_t, DurableCallback>, std::less<>> waiting_;
};

// Keeps events in memory (tests, single-process demos): durable as soon as
// published; sinks run on the publishing thread.
class MemoryReplicator : public ReplicatorBase {
 public:
  explicit MemoryReplicator(std::string name = "memory");
  absl::Status Publish(ReplicationEvent event) override;
  absl::Status Flush() override { return absl::OkStatus(); }
  absl::StatusOr<std::uint64_t> LastSequence(std::string_view queue) override;
  absl::Status Read(std::string_view queue, std::uint64_t after,
                    const EventVisitor& visit) override;
  void Close() override;
  std::vector<ReplicationEvent> Events() const;  // every queue, publish order

 private:
  std::vector<ReplicationEvent> events_;
};

// Tags every event with its shard (`shardId` and metadata `shard.id`) and
// forwards to `inner` (the seed's ShardedResourceLeaseReplicator).
class ShardedReplicator : public Replicator {
 public:
  ShardedReplicator(std::shared_ptr<Replicator> inner, std::string shard_id);
  absl::Status Publish(ReplicationEvent event) override;
  void WhenDurable(std::string_view queue, std::uint64_t sequence, DurableCallback done) override {
    inner_->WhenDurable(queue, sequence, std::move(done));
  }
  absl::Status Flush() override { return inner_->Flush(); }
  absl::StatusOr<std::uint64_t> LastSequence(std::string_view queue) override {
    return inner_->LastSequence(queue);
  }
  absl::Status Read(std::string_view queue, std::uint64_t after,
                    const EventVisitor& visit) override {
    return inner_->Read(queue, after, visit);
  }
  void AddSink(std::shared_ptr<ReplicationSink> sink) override { inner_->AddSink(std::move(sink)); }
  ReplicatorStatus Status() const override;
  void Close() override { inner_->Close(); }
  const std::string& shard_id() const { return shard_id_; }

 private:
  std::shared_ptr<Replicator> inner_;
  std::string shard_id_;
};

// One stream, many replicators (the seed's CompositeResourceLeaseReplicator):
// Publish goes to each; an event is durable when it is durable in all of
// them; Read and LastSequence use the first (the primary log).
class CompositeReplicator : public Replicator {
 public:
  explicit CompositeReplicator(std::vector<std::shared_ptr<Replicator>> replicators);
  absl::Status Publish(ReplicationEvent event) override;
  void WhenDurable(std::string_view queue, std::uint64_t sequence, DurableCallback done) override;
  absl::Status Flush() override;
  absl::StatusOr<std::uint64_t> LastSequence(std::string_view queue) override;
  absl::Status Read(std::string_view queue, std::uint64_t after,
                    const EventVisitor& visit) override;
  // Sinks attach to the primary only (each event reaches a sink once).
  void AddSink(std::shared_ptr<ReplicationSink> sink) override;
  ReplicatorStatus Status() const override;
  void Close() override;
  const std::vector<std::shared_ptr<Replicator>>& replicators() const { return replicators_; }

 private:
  std::vector<std::shared_ptr<Replicator>> replicators_;
};

// Records the last applied sequence per queue and drops what it has already
// applied (duplicates on replay), forwarding the rest to `inner` (may be
// null). Records the seed's metrics when given a registry:
//   omnirelay.resourcelease.replication.events  counter, tags
//       resourcelease.namespace, shard.id, lease.replay, replication.sink
//   omnirelay.resourcelease.replication.lag     histogram (ms): apply time
//       minus the event's occurrence time
struct Checkpoint {
  std::string sink;
  std::string queue;
  std::string shard;
  std::uint64_t sequence = 0;  // last applied
  std::uint64_t applied = 0;
  std::uint64_t duplicates = 0;  // dropped: sequence <= checkpoint
  std::uint64_t replayed = 0;    // applied with lease.replay=true
  std::int64_t updated_at_us = 0;
};

class CheckpointingSink : public ReplicationSink {
 public:
  CheckpointingSink(std::string name, std::shared_ptr<ReplicationSink> inner,
                    std::shared_ptr<core::Clock> clock,
                    std::shared_ptr<core::MetricsRegistry> metrics = nullptr);
  std::string name() const override { return name_; }
  absl::Status Apply(const ReplicationEvent& event) override;
  absl::Status ApplyBatch(std::span<const ReplicationEvent> events) override;
  // Starts `queue` at `sequence` (e.g. restored from a persisted checkpoint).
  void Seed(const std::string& queue, std::uint64_t sequence);
  std::uint64_t Last(std::string_view queue) const;
  std::vector<Checkpoint> Checkpoints() const;

 private:
  // Filters `events` to what is new (mu_ held) and updates bookkeeping.
  std::vector<const ReplicationEvent*> FilterLocked(std::span<const ReplicationEvent> events);

  const std::string name_;
  const std::shared_ptr<ReplicationSink> inner_;
  const std::shared_ptr<core::Clock> clock_;
  const std::shared_ptr<core::MetricsRegistry> metrics_;
  mutable std::mutex mu_;
  std::map<std::string, Checkpoint, std::less<>> checkpoints_;
};

// A sink that keeps every event it sees (tests, verifying drills).
class RecordingSink : public ReplicationSink {
 public:
  explicit RecordingSink(std::string name = "recording") : name_(std::move(name)) {}
  std::string name() const override { return name_; }
  absl::Status Apply(const ReplicationEvent& event) override;
  std::vector<ReplicationEvent> Events() const;

 private:
  std::string name_;
  mutable std::mutex mu_;
  std::vector<ReplicationEvent> events_;
};

}  // namespace omnirelay::replication
