#pragma once
// Deterministic capture: each replicated effect is recorded once under a
// stable effect id, so replaying a log applies every effect exactly once.
//
// DeterministicStateStore is the seed's IDeterministicStateStore: TryAdd
// atomically adds a record if its effect id is absent (true: first time, the
// effect runs; false: it was recorded before, a replay skips it). Stores:
//   * MemoryDeterministicStore     (tests);
//   * SqliteDeterministicStore     INSERT ... ON CONFLICT DO NOTHING on a
//                                  primary key: atomic across threads and
//                                  processes sharing the file;
//   * FileSystemDeterministicStore one JSON file per effect id, created
//                                  atomically (written under a temporary name,
//                                  then link(2)ed to its final name, which
//                                  fails when it exists): readable with cat,
//                                  the base of an object-store adapter
//                                  (If-None-Match: * is the same contract).
//
// DeterministicCoordinator is a ReplicationSink: it turns each event into a
// record under its effect id (default "{changeId}/seq/{n}", changeId default
// "resourcelease.{queue}") and try-adds it, counting hits and misses.
// Placeholders: {changeId} {queue} {n} (= {seq}) {op} {requestId}
// {resourceType} {resourceId} {shard}.
//
// Metrics (metrics.h): try_add.hits / try_add.misses (tag
// resourcelease.namespace, deterministic.store), store.latency (ms, tags
// deterministic.store, deterministic.operation), store.errors.
// Thread-safety: stores and the coordinator are thread-safe.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "omnirelay/replication/replicator.h"
#include "omnirelay/replication/sqlite_util.h"

namespace omnirelay::replication {

struct DeterministicRecord {
  std::string effect_id;
  std::string kind;  // the event's op
  std::int64_t version = 1;
  std::string payload;  // the event's canonical JSON
  std::int64_t recorded_at_us = 0;
  friend bool operator==(const DeterministicRecord&, const DeterministicRecord&) = default;
};

class DeterministicStateStore {
 public:
  virtual ~DeterministicStateStore() = default;
  virtual std::string kind() const = 0;  // memory | sqlite | file
  virtual absl::StatusOr<bool> TryAdd(const DeterministicRecord& record) = 0;
  // One answer per record, in order; each record is added atomically (the
  // SQLite store commits the whole batch in one transaction).
  virtual absl::StatusOr<std::vector<bool>> TryAddMany(
      std::span<const DeterministicRecord> records);
  virtual absl::StatusOr<std::optional<DeterministicRecord>> Get(std::string_view effect_id) = 0;
  virtual absl::StatusOr<std::uint64_t> Count() = 0;
  // Every effect id, sorted (snapshots compared by the drills).
  virtual absl::StatusOr<std::vector<std::string>> EffectIds() = 0;
};

class MemoryDeterministicStore : public DeterministicStateStore {
 public:
  std::string kind() const override { return "memory"; }
  absl::StatusOr<bool> TryAdd(const DeterministicRecord& record) override;
  absl::StatusOr<std::optional<DeterministicRecord>> Get(std::string_view effect_id) override;
  absl::StatusOr<std::uint64_t> Count() override;
  absl::StatusOr<std::vector<std::string>> EffectIds() override;

 private:
  std::mutex mu_;
  absl::flat_hash_map<std::string, DeterministicRecord> records_;
};

struct SqliteDeterministicStoreOptions {
  std::string path;
  std::string table = "deterministic_effects";
  bool full_sync = false;  // NORMAL survives a process crash; FULL also power loss
};

class SqliteDeterministicStore : public DeterministicStateStore {
 public:
  static absl::StatusOr<std::shared_ptr<SqliteDeterministicStore>> Open(
      SqliteDeterministicStoreOptions options);
  std::string kind() const override { return "sqlite"; }
  absl::StatusOr<bool> TryAdd(const DeterministicRecord& record) override;
  absl::StatusOr<std::vector<bool>> TryAddMany(
      std::span<const DeterministicRecord> records) override;
  absl::StatusOr<std::optional<DeterministicRecord>> Get(std::string_view effect_id) override;
  absl::StatusOr<std::uint64_t> Count() override;
  absl::StatusOr<std::vector<std::string>> EffectIds() override;

 private:
  explicit SqliteDeterministicStore(SqliteDeterministicStoreOptions options)
      : options_(std::move(options)) {}
  const SqliteDeterministicStoreOptions options_;
  std::mutex mu_;  // one connection, one caller at a time
  sqlite::Db db_;
  std::unique_ptr<sqlite::Stmt> insert_;
};

struct FileSystemDeterministicStoreOptions {
  std::string root;        // directory (created)
  bool full_sync = false;  // fsync each record and the directory
};

class FileSystemDeterministicStore : public DeterministicStateStore {
 public:
  static absl::StatusOr<std::shared_ptr<FileSystemDeterministicStore>> Open(
      FileSystemDeterministicStoreOptions options);
  std::string kind() const override { return "file"; }
  absl::StatusOr<bool> TryAdd(const DeterministicRecord& record) override;
  absl::StatusOr<std::optional<DeterministicRecord>> Get(std::string_view effect_id) override;
  absl::StatusOr<std::uint64_t> Count() override;
  absl::StatusOr<std::vector<std::string>> EffectIds() override;
  // "resourcelease.default/seq/7" -> "resourcelease.default%2Fseq%2F7.json"
  static std::string FileName(std::string_view effect_id);

 private:
  explicit FileSystemDeterministicStore(FileSystemDeterministicStoreOptions options)
      : options_(std::move(options)) {}
  const FileSystemDeterministicStoreOptions options_;
  std::atomic<std::uint64_t> tmp_counter_{0};
};

struct DeterministicOptions {
  std::string change_id = "resourcelease.{queue}";
  std::string effect_id_format = "{changeId}/seq/{n}";
  std::int64_t version = 1;
};

// InvalidArgument when the format names an unknown placeholder or lacks
// {n}/{seq}/{requestId} (effect ids must tell events apart).
absl::Status ValidateDeterministicOptions(const DeterministicOptions& options);

class DeterministicCoordinator : public ReplicationSink {
 public:
  DeterministicCoordinator(std::shared_ptr<DeterministicStateStore> store,
                           DeterministicOptions options, std::shared_ptr<core::Clock> clock,
                           std::shared_ptr<core::MetricsRegistry> metrics = nullptr);
  std::string name() const override { return "deterministic." + store_->kind(); }
  std::string EffectId(const ReplicationEvent& event) const;
  // true: recorded now (the effect is new); false: it was recorded before.
  absl::StatusOr<bool> Record(const ReplicationEvent& event);
  absl::Status Apply(const ReplicationEvent& event) override { return Record(event).status(); }
  absl::Status ApplyBatch(std::span<const ReplicationEvent> events) override;
  std::uint64_t hits() const { return hits_.load(); }      // already recorded (skipped)
  std::uint64_t misses() const { return misses_.load(); }  // recorded now
  const std::shared_ptr<DeterministicStateStore>& store() const { return store_; }

 private:
  DeterministicRecord RecordOf(const ReplicationEvent& event) const;
  void Count(const ReplicationEvent& event, bool added);
  void Observe(std::string_view operation, core::Duration took);

  const std::shared_ptr<DeterministicStateStore> store_;
  const DeterministicOptions options_;
  const std::shared_ptr<core::Clock> clock_;
  const std::shared_ptr<core::MetricsRegistry> metrics_;
  std::atomic<std::uint64_t> hits_{0};
  std::atomic<std::uint64_t> misses_{0};
};

}  // namespace omnirelay::replication
