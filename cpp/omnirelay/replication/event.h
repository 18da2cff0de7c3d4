#pragma once
// The replication event: one ResourceLease queue mutation as the log keeps it.
//
// Every mutation a queue applies (enqueue, lease, complete, ...) becomes one
// event with the queue's gap-free sequence number (1, 2, 3, ... per queue,
// continued across restarts by recovery). Events are encoded as canonical
// JSON (sorted keys, compact, `body` in base64) and protected by a CRC-32 of
// exactly those bytes, so a flipped or truncated byte in any log (SQLite row,
// segment file, JSON line) is detected on read and reported with its position.
//
// Encoded forms:
//   * EncodeJson(event)      canonical event JSON (what the checksum covers);
//   * EncodeLine(event)      "<crc32 as 8 hex digits> <json>\n" (JSON lines);
//   * EncodeSegment(event)   {"checksum":"crc32:<8 hex>","event":<json>} (one
//                            immutable segment file per event).
// Thread-safety: all functions are pure.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "omnirelay/resourcelease/queue.h"

namespace omnirelay::replication {

// Metadata key the sharded replicator sets (the seed's `shard.id`).
inline constexpr char kShardTag[] = "shard.id";
// Metadata key on events delivered by recovery (the seed's `lease.replay`).
inline constexpr char kReplayTag[] = "lease.replay";

struct ReplicationEvent {
  std::string queue;           // namespace of the queue ("default", "billing", ...)
  std::uint64_t sequence = 0;  // per queue, strictly increasing without gaps
  std::string shard_id;        // "" unless a sharded replicator tagged it
  std::string op;              // resourcelease::OpName: enqueue, lease, complete, ...
  std::uint64_t item_id = 0;
  std::uint64_t fencing_token = 0;
  std::string owner;      // lease owner (lease/heartbeat/complete/fail/expire/dead-letter)
  std::string principal;  // caller principal when known, else the owner
  std::string request_id;
  int attempt = 0;
  std::int64_t occurred_at_us = 0;  // wall clock, microseconds since the Unix epoch
  std::int64_t expires_at_us = 0;   // lease/heartbeat: the lease's expiry
  std::string reason;               // fail/expire/dead-letter
  // Enqueue, restore, drain, dead-letter, requeue carry the item.
  std::optional<resourcelease::ItemPayload> payload;
  std::map<std::string, std::string> metadata;  // shard.id, lease.replay, ...

  bool replay() const;  // metadata lease.replay == "true"
  friend bool operator==(const ReplicationEvent& a, const ReplicationEvent& b);
};

// Builds the event of one queue mutation (copies what the event keeps).
ReplicationEvent FromMutation(std::string_view queue, const resourcelease::MutationEvent& m);

// Canonical JSON; metadata lease.replay is never encoded (it describes one
// delivery, not the event).
std::string EncodeJson(const ReplicationEvent& event);
// DataLoss on malformed JSON or a missing/mistyped field.
absl::StatusOr<ReplicationEvent> DecodeJson(std::string_view json);

// CRC-32 (zlib's polynomial) of the bytes.
std::uint32_t Checksum(std::string_view bytes);

std::string EncodeLine(const ReplicationEvent& event);
// DataLoss naming what is wrong (checksum mismatch, truncated line).
absl::StatusOr<ReplicationEvent> DecodeLine(std::string_view line);

std::string EncodeSegment(const ReplicationEvent& event);
absl::StatusOr<ReplicationEvent> DecodeSegment(std::string_view text);

std::int64_t ToUnixMicros(core::TimePoint t);
core::TimePoint FromUnixMicros(std::int64_t us);

}  // namespace omnirelay::replication
