#include "omnirelay/replication/durable_replicators.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "omnirelay/core/status.h"

namespace omnirelay::replication {

namespace {

absl::Status Corrupt(std::string message) {
  return core::MakeStatus(absl::StatusCode::kDataLoss, message, kErrCorrupt);
}

absl::Status Errno(std::string_view what, const std::string& path) {
  const int err = errno;
  std::string message = std::string(what) + " " + path + ": " + std::strerror(err);
  // ENOSPC/EIO/EROFS/...: the write failed; the writer retries.
  return absl::UnavailableError(message);
}

std::uint64_t ThreadCpuMicros() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

}  // namespace

// --- BatchingReplicator --------------------------------------------------------------

BatchingReplicator::BatchingReplicator(std::string name, std::string kind, BatchOptions options)
    : ReplicatorBase(std::move(name), std::move(kind)), options_(options) {}

BatchingReplicator::~BatchingReplicator() { StopWriter(); }

void BatchingReplicator::StartWriter() {
  {
    std::lock_guard lock(mu_);
    started_ = true;
  }
  writer_ = std::thread([this] {
    WriterLoop();
    {
      std::lock_guard lock(mu_);
      writer_exited_ = true;
    }
    cv_.notify_all();
  });
}

void BatchingReplicator::StopWriter() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

void BatchingReplicator::Close() { StopWriter(); }

absl::Status BatchingReplicator::Publish(ReplicationEvent event) {
  {
    std::lock_guard lock(mu_);
    if (auto s = AcceptLocked(event); !s.ok()) return s;
    buffer_.push_back(std::move(event));
  }
  cv_.notify_all();
  return absl::OkStatus();
}

absl::Status BatchingReplicator::Flush() {
  std::unique_lock lock(mu_);
  const auto target = status_.queues;
  auto done = [&] {
    if (!status_.write_error.ok()) return true;
    for (const auto& [q, pos] : target) {
      if (status_.queues[q].delivered < pos.published) return false;
    }
    return true;
  };
  cv_.wait(lock, [&] { return done() || writer_exited_ || (stop_ && !started_); });
  return status_.write_error;
}

void BatchingReplicator::WriterLoop() {
  // The batch in flight: taken out of the buffer (moved, not copied), kept
  // and retried until it is written.
  std::vector<ReplicationEvent> batch;
  for (;;) {
    if (batch.empty()) {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !buffer_.empty(); });
      if (buffer_.empty()) return;  // stopping and nothing left
      const size_t n = std::min(buffer_.size(), options_.max_batch);
      batch.reserve(n);
      for (size_t i = 0; i < n; ++i) batch.push_back(std::move(buffer_[i]));
      buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(n));
    }
    const std::uint64_t cpu0 = ThreadCpuMicros();
    absl::Status s = WriteBatch(batch);
    if (s.ok()) {
      CommitDone(batch);
      batch.clear();
      const std::uint64_t cpu = ThreadCpuMicros() - cpu0;
      std::lock_guard lock(mu_);
      status_.writer_cpu_us += cpu;
      continue;
    }
    WriteFailed(s);
    std::unique_lock lock(mu_);
    // Closing while the log cannot be written: what is in flight is lost
    // with the process (Close reports it through Flush's error).
    if (stop_) return;
    cv_.wait_for(lock, options_.retry_interval, [&] { return stop_; });
    if (stop_) return;
  }
}

// --- SqliteReplicator ------------------------------------------------------------------

SqliteReplicator::SqliteReplicator(SqliteReplicatorOptions options, std::string name)
    : BatchingReplicator(std::move(name), "sqlite", options.batch), options_(std::move(options)) {
  max_pages_.store(options_.max_page_count);
}

absl::StatusOr<std::shared_ptr<SqliteReplicator>> SqliteReplicator::Open(
    SqliteReplicatorOptions options, std::string name) {
  if (!sqlite::ValidIdentifier(options.table)) {
    return absl::InvalidArgumentError("replication table name '" + options.table +
                                      "' must be letters, digits and '_'");
  }
  if (options.path.empty()) return absl::InvalidArgumentError("replication path is required");
  std::shared_ptr<SqliteReplicator> r(new SqliteReplicator(std::move(options), std::move(name)));
  if (auto s = r->Init(); !s.ok()) return s;
  r->StartWriter();
  return r;
}

SqliteReplicator::~SqliteReplicator() { StopWriter(); }

absl::Status SqliteReplicator::Init() {
  auto db = sqlite::Open(options_.path, options_.full_sync);
  if (!db.ok()) return db.status();
  db_ = std::move(*db);
  // An append-only log: a larger page cache and fewer WAL checkpoints (each
  // one copies pages into the database and fsyncs it) keep the writer off
  // the disk between commits. The WAL still syncs per commit with FULL.
  if (auto s = sqlite::Exec(db_.get(), "PRAGMA cache_size=-65536"); !s.ok()) return s;
  if (auto s = sqlite::Exec(db_.get(), "PRAGMA wal_autocheckpoint=16384"); !s.ok()) return s;
  const std::string& t = options_.table;
  if (auto s =
          sqlite::Exec(db_.get(), "CREATE TABLE IF NOT EXISTS " + t +
                                      " (queue TEXT NOT NULL, sequence INTEGER NOT NULL,"
                                      " op TEXT NOT NULL, request_id TEXT NOT NULL,"
                                      " shard_id TEXT NOT NULL, occurred_at_us INTEGER NOT NULL,"
                                      " checksum INTEGER NOT NULL, event TEXT NOT NULL,"
                                      " PRIMARY KEY (queue, sequence)) WITHOUT ROWID");
      !s.ok()) {
    return s;
  }
  sqlite::Stmt last(db_.get(), "SELECT queue, MAX(sequence) FROM " + t + " GROUP BY queue");
  int rc;
  std::lock_guard lock(mu_);
  while ((rc = last.Step()) == SQLITE_ROW) {
    SeedLocked(std::string(last.Text(0)), static_cast<std::uint64_t>(last.Int(1)));
  }
  if (rc != SQLITE_DONE) return sqlite::Error(db_.get(), rc, "reading " + options_.path);
  insert_ = std::make_unique<sqlite::Stmt>(
      db_.get(), "INSERT INTO " + t +
                     " (queue, sequence, op, request_id, shard_id, occurred_at_us, checksum, event)"
                     " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
  if (!insert_->ok()) return sqlite::Error(db_.get(), insert_->rc(), "preparing insert");
  return absl::OkStatus();
}

absl::Status SqliteReplicator::WriteBatch(std::span<const ReplicationEvent> batch) {
  sqlite3* db = db_.get();
  if (const auto pages = max_pages_.load(); pages != applied_max_pages_ && pages > 0) {
    if (auto s = sqlite::Exec(db, "PRAGMA max_page_count=" + std::to_string(pages)); !s.ok()) {
      return s;
    }
    applied_max_pages_ = pages;
  }
  if (auto s = sqlite::Exec(db, "BEGIN IMMEDIATE"); !s.ok()) return s;
  for (const auto& e : batch) {
    const std::string json = EncodeJson(e);
    insert_->Reset();
    insert_->Bind(1, e.queue);
    insert_->Bind(2, static_cast<std::int64_t>(e.sequence));
    insert_->Bind(3, e.op);
    insert_->Bind(4, e.request_id);
    insert_->Bind(5, e.shard_id);
    insert_->Bind(6, e.occurred_at_us);
    insert_->Bind(7, static_cast<std::int64_t>(Checksum(json)));
    insert_->Bind(8, json);
    if (const int rc = insert_->Step(); rc != SQLITE_DONE) {
      absl::Status s = sqlite::Error(db, rc, "appending to " + options_.path);
      insert_->Reset();
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return s;
    }
  }
  insert_->Reset();
  if (auto s = sqlite::Exec(db, "COMMIT"); !s.ok()) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::uint64_t> SqliteReplicator::LastSequence(std::string_view queue) {
  std::lock_guard lock(mu_);
  auto it = status_.queues.find(std::string(queue));
  return it == status_.queues.end() ? 0 : it->second.durable;
}

absl::Status SqliteReplicator::Read(std::string_view queue, std::uint64_t after,
                                    const EventVisitor& visit) {
  // Its own connection: the writer keeps appending meanwhile (WAL readers
  // see a consistent snapshot).
  auto db = sqlite::Open(options_.path, false);
  if (!db.ok()) return db.status();
  sqlite::Stmt read(db->get(), "SELECT sequence, checksum, event FROM " + options_.table +
                                   " WHERE queue = ?1 AND sequence > ?2 ORDER BY sequence");
  if (!read.ok()) return sqlite::Error(db->get(), read.rc(), "reading " + options_.path);
  read.Bind(1, queue);
  read.Bind(2, static_cast<std::int64_t>(after));
  const std::string where = "replication log " + options_.path + " table " + options_.table +
                            ", queue '" + std::string(queue) + "'";
  std::uint64_t expect = after + 1;
  int rc;
  while ((rc = read.Step()) == SQLITE_ROW) {
    const auto seq = static_cast<std::uint64_t>(read.Int(0));
    if (seq != expect) {
      return Corrupt(where + ": sequence " + std::to_string(expect) + " is missing (next row is " +
                     std::to_string(seq) + ")");
    }
    const std::string_view json = read.Text(2);
    if (static_cast<std::uint32_t>(read.Int(1)) != Checksum(json)) {
      return Corrupt(where + ", sequence " + std::to_string(seq) +
                     ": checksum mismatch (row corrupted or truncated, " +
                     std::to_string(json.size()) + " bytes)");
    }
    auto event = DecodeJson(json);
    if (!event.ok()) {
      return Corrupt(where + ", sequence " + std::to_string(seq) + ": " +
                     std::string(event.status().message()));
    }
    if (event->sequence != seq || event->queue != queue) {
      return Corrupt(where + ", sequence " + std::to_string(seq) + ": row holds event " +
                     event->queue + "/" + std::to_string(event->sequence));
    }
    if (auto s = visit(*event); !s.ok()) return s;
    ++expect;
  }
  if (rc != SQLITE_DONE) {
    absl::Status s =
        sqlite::Error(db->get(), rc, where + " after sequence " + std::to_string(expect - 1));
    if (s.code() == absl::StatusCode::kDataLoss) return core::WithErrorCode(s, kErrCorrupt);
    return s;
  }
  return absl::OkStatus();
}

// --- FileSegmentReplicator ----------------------------------------------------------------

FileSegmentReplicator::FileSegmentReplicator(FileSegmentReplicatorOptions options, std::string name)
    : BatchingReplicator(std::move(name), "file", options.batch), options_(std::move(options)) {}

FileSegmentReplicator::~FileSegmentReplicator() { StopWriter(); }

std::string FileSegmentReplicator::SegmentName(std::uint64_t sequence) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%020llu.json", static_cast<unsigned long long>(sequence));
  return buf;
}

namespace {

// Sequences of the segment files in `dir` (ignores temporaries and others).
absl::StatusOr<std::vector<std::uint64_t>> ListSegments(const std::string& dir) {
  std::vector<std::uint64_t> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) {
    if (errno == ENOENT) return out;
    return Errno("listing", dir);
  }
  while (struct dirent* entry = ::readdir(d)) {
    std::string_view name = entry->d_name;
    if (name.size() != 25 || name.substr(20) != ".json") continue;
    std::uint64_t seq = 0;
    bool digits = true;
    for (char c : name.substr(0, 20)) {
      if (c < '0' || c > '9') {
        digits = false;
        break;
      }
      seq = seq * 10 + static_cast<std::uint64_t>(c - '0');
    }
    if (digits) out.push_back(seq);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("opening", path);
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      auto s = Errno("reading", path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("writing", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("opening", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("syncing", dir);
  return absl::OkStatus();
}

bool ValidQueueDir(std::string_view queue) {
  return !queue.empty() && queue != "." && queue != ".." &&
         queue.find('/') == std::string_view::npos;
}

}  // namespace

absl::StatusOr<std::shared_ptr<FileSegmentReplicator>> FileSegmentReplicator::Open(
    FileSegmentReplicatorOptions options, std::string name) {
  if (options.root.empty()) return absl::InvalidArgumentError("replication path is required");
  std::shared_ptr<FileSegmentReplicator> r(
      new FileSegmentReplicator(std::move(options), std::move(name)));
  if (auto s = r->Init(); !s.ok()) return s;
  r->StartWriter();
  return r;
}

absl::Status FileSegmentReplicator::Init() {
  std::error_code ec;
  std::filesystem::create_directories(options_.root, ec);
  if (ec) return absl::UnavailableError("creating " + options_.root + ": " + ec.message());
  std::lock_guard lock(mu_);
  for (const auto& entry : std::filesystem::directory_iterator(options_.root, ec)) {
    if (!entry.is_directory()) continue;
    auto segments = ListSegments(entry.path().string());
    if (!segments.ok()) return segments.status();
    if (!segments->empty()) SeedLocked(entry.path().filename().string(), segments->back());
  }
  if (ec) return absl::UnavailableError("listing " + options_.root + ": " + ec.message());
  return absl::OkStatus();
}

absl::Status FileSegmentReplicator::WriteBatch(std::span<const ReplicationEvent> batch) {
  std::vector<std::string> dirs;
  for (const auto& e : batch) {
    if (!ValidQueueDir(e.queue)) {
      return absl::InvalidArgumentError("queue name '" + e.queue + "' is not a directory name");
    }
    const std::string dir = options_.root + "/" + e.queue;
    if (dirs.empty() || dirs.back() != dir) {
      if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return Errno("creating", dir);
      if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
    }
    const std::string final_path = dir + "/" + SegmentName(e.sequence);
    const std::string tmp_path = dir + "/." + SegmentName(e.sequence) + ".tmp";
    const std::string text = EncodeSegment(e);
    int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Errno("creating", tmp_path);
    absl::Status s = WriteAll(fd, text, tmp_path);
    if (s.ok() && options_.full_sync && ::fsync(fd) != 0) s = Errno("syncing", tmp_path);
    ::close(fd);
    if (!s.ok()) {
      ::unlink(tmp_path.c_str());
      return s;
    }
    // link() fails if the final name exists: a segment is created once,
    // complete, and never replaced.
    if (::link(tmp_path.c_str(), final_path.c_str()) != 0) {
      if (errno != EEXIST) {
        s = Errno("linking", final_path);
        ::unlink(tmp_path.c_str());
        return s;
      }
      // A retried batch after a failure midway: the same bytes are fine,
      // different bytes under an existing name are not.
      auto existing = ReadFile(final_path);
      ::unlink(tmp_path.c_str());
      if (!existing.ok()) return existing.status();
      if (*existing != text) {
        return Corrupt("segment " + final_path + " exists with different content");
      }
      continue;
    }
    ::unlink(tmp_path.c_str());
  }
  if (options_.full_sync) {
    for (const auto& dir : dirs) {
      if (auto s = SyncDir(dir); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::uint64_t> FileSegmentReplicator::LastSequence(std::string_view queue) {
  std::lock_guard lock(mu_);
  auto it = status_.queues.find(std::string(queue));
  return it == status_.queues.end() ? 0 : it->second.durable;
}

absl::Status FileSegmentReplicator::Read(std::string_view queue, std::uint64_t after,
                                         const EventVisitor& visit) {
  if (!ValidQueueDir(queue)) return absl::InvalidArgumentError("bad queue name");
  const std::string dir = options_.root + "/" + std::string(queue);
  auto segments = ListSegments(dir);
  if (!segments.ok()) return segments.status();
  std::uint64_t expect = after + 1;
  for (std::uint64_t seq : *segments) {
    if (seq <= after) continue;
    const std::string path = dir + "/" + SegmentName(seq);
    if (seq != expect) {
      return Corrupt("replication segments " + dir + ": segment " + SegmentName(expect) +
                     " is missing (next is " + SegmentName(seq) + ")");
    }
    auto text = ReadFile(path);
    if (!text.ok()) return text.status();
    auto event = DecodeSegment(*text);
    if (!event.ok()) {
      return Corrupt("replication segment " + path + ": " + std::string(event.status().message()));
    }
    if (event->sequence != seq || event->queue != queue) {
      return Corrupt("replication segment " + path + " holds event " + event->queue + "/" +
                     std::to_string(event->sequence));
    }
    if (auto s = visit(*event); !s.ok()) return s;
    ++expect;
  }
  return absl::OkStatus();
}

}  // namespace omnirelay::replication
