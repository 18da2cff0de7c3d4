#pragma once
// Recovery: rebuild a queue from its replication log.
//
// RecoveryFold folds a queue's events, in order, into the state the queue had
// after the last one (resourcelease::RecoveredState): pending items in serving
// order, dead letters, completed RequestIds (for idempotent enqueue), the
// highest sequence, item id and fencing token. Leases that were active at the
// crash end like an expiry: their items are pending again (the attempt
// counts), and every token handed out from now on is above all logged ones,
// so a worker still holding an old lease gets stale-fencing-token.
//
// ReplayLog reads the log and, besides folding, delivers every event to the
// replay sinks with metadata lease.replay=true in batches (the checkpointing
// sink in front of the deterministic coordinator: effects recorded before the
// crash are hits and skipped, the rest recorded now). The node calls it before
// it serves: leasing resumes only on a fully replayed queue. A corrupt log ends
// the replay with DATA_LOSS naming the position (the node then refuses to start
// rather than serve a queue with holes).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "omnirelay/replication/replicator.h"
#include "omnirelay/resourcelease/queue.h"

namespace omnirelay::replication {

class RecoveryFold {
 public:
  // `token_margin` is added to the highest logged fencing token: 0 when every
  // lease was answered only after it was durable; a large margin otherwise
  // (a lease answered before its event reached the log cannot be known).
  explicit RecoveryFold(std::uint64_t token_margin = 0) : token_margin_(token_margin) {}
  // FailedPrecondition when the sequence does not follow the previous one.
  absl::Status Apply(const ReplicationEvent& event);
  resourcelease::RecoveredState Finish() const;
  std::uint64_t last_sequence() const { return last_sequence_; }

 private:
  struct ItemState {
    resourcelease::ItemRecord record;
    enum { kPending, kActive, kDead } state = kPending;
    std::uint64_t order = 0;  // when it last became pending (FIFO within a priority)
  };
  std::uint64_t token_margin_;
  std::uint64_t last_sequence_ = 0;
  std::uint64_t max_token_ = 0;
  std::uint64_t max_item_ = 0;
  std::uint64_t order_ = 0;
  absl::flat_hash_map<std::uint64_t, ItemState> items_;
  std::vector<std::string> completed_;
};

struct ReplayReport {
  std::string queue;
  std::uint64_t events = 0;            // replayed events
  std::uint64_t last_sequence = 0;     // the log's highest
  std::uint64_t effects_recorded = 0;  // deterministic misses during the replay
  std::uint64_t effects_skipped = 0;   // deterministic hits (already recorded)
  size_t pending = 0;
  size_t dead_letters = 0;
  size_t completed = 0;
  double seconds = 0;
};

// Reads `queue` from `log`, delivers each event (tagged lease.replay=true)
// to `sinks`, and folds it. `coordinator` (may be null) is only read for the
// hit/miss counts of the report.
absl::StatusOr<ReplayReport> ReplayLog(Replicator& log, std::string_view queue,
                                       const std::vector<std::shared_ptr<ReplicationSink>>& sinks,
                                       RecoveryFold& fold,
                                       const class DeterministicCoordinator* coordinator = nullptr,
                                       size_t batch = 1024);

}  // namespace omnirelay::replication
