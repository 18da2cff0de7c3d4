#pragma once
// The durable replicators: a SQLite log and immutable JSON segment files.
//
// Both batch on one writer thread (group commit): Publish only appends to an
// in-memory buffer under a mutex (it runs under the queue's lock); the writer
// takes everything buffered (up to `max_batch`), writes it in one
// transaction / one directory sync, then marks it durable, answers the
// acknowledgements waiting for it and hands the batch to the sinks. While one
// commit runs the next batch accumulates, so throughput grows with load while
// an idle log commits each event at once (no timer added to latency).
//
// Restart: the constructor (Open) reads the highest sequence per queue from
// the log; Publish continues at last + 1.
//
// Write failure (disk full, I/O error, read-only file system): the batch stays
// buffered, acknowledgements fail with UNAVAILABLE / replication-write-failed,
// and the writer retries every `retry_interval` until a write succeeds.
#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "omnirelay/replication/replicator.h"
#include "omnirelay/replication/sqlite_util.h"

namespace omnirelay::replication {

struct BatchOptions {
  size_t max_batch = 8192;  // events per commit at most
  core::Duration retry_interval = std::chrono::milliseconds(200);
};

// Base of the two: the buffer and the writer thread.
class BatchingReplicator : public ReplicatorBase {
 public:
  ~BatchingReplicator() override;
  absl::Status Publish(ReplicationEvent event) override;
  absl::Status Flush() override;
  void Close() override;

 protected:
  BatchingReplicator(std::string name, std::string kind, BatchOptions options);
  // Starts the writer (the subclass calls it once its own state is ready).
  void StartWriter();
  // Stops and joins the writer (the subclass calls it in its destructor).
  void StopWriter();
  // Writes one batch (writer thread only).
  virtual absl::Status WriteBatch(std::span<const ReplicationEvent> batch) = 0;

 private:
  void WriterLoop();

  const BatchOptions options_;
  std::deque<ReplicationEvent> buffer_;  // published, not yet durable (mu_)
  bool stop_ = false;
  bool started_ = false;        // mu_
  bool writer_exited_ = false;  // mu_
  std::thread writer_;
};

struct SqliteReplicatorOptions {
  std::string path;                    // the database file (created)
  std::string table = "lease_events";  // letters, digits, '_'
  // true: synchronous=FULL (each commit fsyncs the WAL: survives power loss);
  // false: synchronous=NORMAL (survives a process crash; a power loss may
  // lose the last commits).
  bool full_sync = true;
  BatchOptions batch{};
  // Caps the database size (PRAGMA max_page_count; 0 = SQLite's default).
  // Reaching it fails writes with SQLITE_FULL exactly like a full disk (tests
  // use it to prove that a full log stops acknowledging and loses nothing).
  std::int64_t max_page_count = 0;
};

class SqliteReplicator : public BatchingReplicator {
 public:
  // InvalidArgument (bad table name), UNAVAILABLE/DATA_LOSS when the file
  // cannot be opened or is not a database.
  static absl::StatusOr<std::shared_ptr<SqliteReplicator>> Open(SqliteReplicatorOptions options,
                                                                std::string name = "sqlite");
  ~SqliteReplicator() override;
  absl::StatusOr<std::uint64_t> LastSequence(std::string_view queue) override;
  absl::Status Read(std::string_view queue, std::uint64_t after,
                    const EventVisitor& visit) override;
  // Changes the size cap for the next commits (see max_page_count).
  void SetMaxPageCount(std::int64_t pages) { max_pages_.store(pages); }
  const SqliteReplicatorOptions& options() const { return options_; }

 protected:
  absl::Status WriteBatch(std::span<const ReplicationEvent> batch) override;

 private:
  SqliteReplicator(SqliteReplicatorOptions options, std::string name);
  absl::Status Init();

  const SqliteReplicatorOptions options_;
  sqlite::Db db_;  // writer thread only (after Init)
  std::unique_ptr<sqlite::Stmt> insert_;
  std::atomic<std::int64_t> max_pages_{0};
  std::int64_t applied_max_pages_ = -1;
};

struct FileSegmentReplicatorOptions {
  // Root directory; events of queue Q go to <root>/<Q>/<sequence:020>.json.
  std::string root;
  // fsync each segment and its directory before acknowledging.
  bool full_sync = true;
  BatchOptions batch{};
};

// The object-store shape (the seed's ObjectStorageResourceLeaseReplicator):
// one immutable JSON object per event under a sortable key. A segment is
// created atomically (written to a temporary name, then hard-linked to its
// final name, which fails if it exists), so a reader never sees half a
// segment under a final name and a segment is never overwritten.
class FileSegmentReplicator : public BatchingReplicator {
 public:
  static absl::StatusOr<std::shared_ptr<FileSegmentReplicator>> Open(
      FileSegmentReplicatorOptions options, std::string name = "file");
  ~FileSegmentReplicator() override;
  absl::StatusOr<std::uint64_t> LastSequence(std::string_view queue) override;
  absl::Status Read(std::string_view queue, std::uint64_t after,
                    const EventVisitor& visit) override;
  static std::string SegmentName(std::uint64_t sequence);  // "00000000000000000042.json"

 protected:
  absl::Status WriteBatch(std::span<const ReplicationEvent> batch) override;

 private:
  FileSegmentReplicator(FileSegmentReplicatorOptions options, std::string name);
  absl::Status Init();

  const FileSegmentReplicatorOptions options_;
};

}  // namespace omnirelay::replication
