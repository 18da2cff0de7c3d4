#include "omnirelay/coord/sqlite_backend.h"

#include <sqlite3.h>

#include <chrono>
#include <map>

namespace omnirelay::coord {
namespace {

using core::MakeStatus;
using core::StatusCode;

constexpr std::int64_t kEventsKept = 10000;

// A prepared statement, finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& Bind(int index, std::int64_t value) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_int64(stmt_, index, value);
    return *this;
  }
  Stmt& Bind(int index, std::string_view value) {
    if (rc_ == SQLITE_OK) {
      rc_ = sqlite3_bind_blob64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT);
    }
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return rc_ == SQLITE_OK ? sqlite3_step(stmt_) : rc_; }
  std::int64_t Int(int column) { return sqlite3_column_int64(stmt_, column); }
  std::string Blob(int column) {
    const void* data = sqlite3_column_blob(stmt_, column);
    const int size = sqlite3_column_bytes(stmt_, column);
    return data == nullptr ? std::string() : std::string(static_cast<const char*>(data), size);
  }
  std::string Error() const { return sqlite3_errmsg(db_); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

core::Status SqlError(sqlite3* db, int rc, std::string_view what) {
  const bool busy = rc == SQLITE_BUSY || rc == SQLITE_LOCKED;
  return MakeStatus(busy ? StatusCode::kUnavailable : StatusCode::kInternal,
                    std::string("sqlite store: ") + std::string(what) + ": " + sqlite3_errmsg(db),
                    busy ? "coord-store-busy" : "coord-store-error");
}

core::Status Exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  sqlite3_free(error);
  if (rc != SQLITE_OK) return SqlError(db, rc, sql);
  return core::Status();
}

std::int64_t ToMs(core::Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS omnirelay_coord_meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO omnirelay_coord_meta VALUES ('revision', 1), ('lease_seq', 4096),
  ('schema_version', 1);
CREATE TABLE IF NOT EXISTS leases(id INTEGER PRIMARY KEY, ttl_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv(key BLOB PRIMARY KEY, value BLOB NOT NULL,
  create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL,
  lease INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL,
  type INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, create_rev INTEGER NOT NULL,
  mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL);
)sql";

}  // namespace

// One write transaction: BEGIN IMMEDIATE, reap expired leases, the caller's
// body, then COMMIT (or ROLLBACK if the body failed or never committed).
// Holds db_mu_ for its lifetime.
class SqliteBackend::WriteScope {
 public:
  explicit WriteScope(SqliteBackend& backend) : backend_(backend), lock_(backend.db_mu_) {
    const int rc = sqlite3_exec(db(), "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      status_ = SqlError(db(), rc, "begin write transaction");
      return;
    }
    open_ = true;
    now_ms_ = backend_.NowMs();
    status_ = Reap();
  }
  ~WriteScope() {
    if (open_) sqlite3_exec(db(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
  const core::Status& status() const { return status_; }
  std::int64_t now_ms() const { return now_ms_; }
  sqlite3* db() const { return backend_.db_; }

  // The revision of this transaction's changes (bumped once, on first use).
  core::StatusOr<Revision> WriteRevision() {
    if (write_revision_ != 0) return write_revision_;
    Stmt bump(db(), "UPDATE omnirelay_coord_meta SET value = value + 1 WHERE name = 'revision'");
    if (int rc = bump.Step(); rc != SQLITE_DONE) return SqlError(db(), rc, "bump revision");
    auto current = CurrentRevision();
    if (!current.ok()) return current.status();
    write_revision_ = *current;
    return write_revision_;
  }
  core::StatusOr<Revision> CurrentRevision() {
    Stmt read(db(), "SELECT value FROM omnirelay_coord_meta WHERE name = 'revision'");
    if (int rc = read.Step(); rc != SQLITE_ROW) return SqlError(db(), rc, "read revision");
    return read.Int(0);
  }
  core::Status Record(WatchEvent::Type type, const KeyValue& kv) {
    Stmt insert(db(),
                "INSERT INTO events(rev, type, key, value, create_rev, mod_rev, version, lease) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    insert.Bind(1, kv.mod_revision)
        .Bind(2, type == WatchEvent::Type::kPut ? 0 : 1)
        .Bind(3, std::string_view(kv.key))
        .Bind(4, std::string_view(kv.value))
        .Bind(5, kv.create_revision)
        .Bind(6, kv.mod_revision)
        .Bind(7, kv.version)
        .Bind(8, kv.lease);
    if (int rc = insert.Step(); rc != SQLITE_DONE) return SqlError(db(), rc, "record event");
    return core::Status();
  }
  // Deletes every key of `lease` and the lease row.
  core::Status DropLease(LeaseId lease) {
    std::vector<std::string> keys;
    {
      Stmt select(db(), "SELECT key FROM kv WHERE lease = ?");
      select.Bind(1, lease);
      int rc;
      while ((rc = select.Step()) == SQLITE_ROW) keys.push_back(select.Blob(0));
      if (rc != SQLITE_DONE) return SqlError(db(), rc, "list lease keys");
    }
    for (const auto& key : keys) {
      auto revision = WriteRevision();
      if (!revision.ok()) return revision.status();
      Stmt del(db(), "DELETE FROM kv WHERE key = ?");
      del.Bind(1, std::string_view(key));
      if (int rc = del.Step(); rc != SQLITE_DONE) return SqlError(db(), rc, "delete lease key");
      KeyValue kv;
      kv.key = key;
      kv.mod_revision = *revision;
      if (auto status = Record(WatchEvent::Type::kDelete, kv); !status.ok()) return status;
    }
    Stmt del(db(), "DELETE FROM leases WHERE id = ?");
    del.Bind(1, lease);
    if (int rc = del.Step(); rc != SQLITE_DONE) return SqlError(db(), rc, "delete lease");
    return core::Status();
  }
  // Whether `lease` exists and has not expired (renewals and new keys are
  // refused from `expires_at` on; its keys are reaped only after the skew).
  core::StatusOr<bool> LeaseLive(LeaseId lease, std::int64_t* ttl_ms = nullptr) {
    Stmt select(db(), "SELECT ttl_ms, expires_at_ms FROM leases WHERE id = ?");
    select.Bind(1, lease);
    const int rc = select.Step();
    if (rc == SQLITE_DONE) return false;
    if (rc != SQLITE_ROW) return SqlError(db(), rc, "read lease");
    if (ttl_ms != nullptr) *ttl_ms = select.Int(0);
    return now_ms_ < select.Int(1);
  }
  core::Status Commit() {
    if (write_revision_ != 0 && write_revision_ % 256 == 0) {
      Stmt trim(db(), "DELETE FROM events WHERE id < (SELECT MAX(id) FROM events) - ?");
      trim.Bind(1, kEventsKept);
      if (int rc = trim.Step(); rc != SQLITE_DONE) return SqlError(db(), rc, "trim events");
    }
    const int rc = sqlite3_exec(db(), "COMMIT", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return SqlError(db(), rc, "commit");
    open_ = false;
    return core::Status();
  }

 private:
  core::Status Reap() {
    std::vector<LeaseId> expired;
    {
      Stmt select(db(), "SELECT id FROM leases WHERE expires_at_ms + ? <= ?");
      select.Bind(1, ToMs(backend_.options_.max_clock_skew)).Bind(2, now_ms_);
      int rc;
      while ((rc = select.Step()) == SQLITE_ROW) expired.push_back(select.Int(0));
      if (rc != SQLITE_DONE) return SqlError(db(), rc, "find expired leases");
    }
    for (LeaseId lease : expired) {
      if (auto status = DropLease(lease); !status.ok()) return status;
    }
    return core::Status();
  }

  SqliteBackend& backend_;
  std::lock_guard<std::mutex> lock_;
  core::Status status_;
  bool open_ = false;
  std::int64_t now_ms_ = 0;
  Revision write_revision_ = 0;
};

core::StatusOr<std::shared_ptr<SqliteBackend>> SqliteBackend::Open(
    SqliteOptions options, std::shared_ptr<core::Clock> clock) {
  if (options.path.empty()) {
    return MakeStatus(StatusCode::kInvalidArgument,
                      "coordination store: sqlite needs a database path", "coord-store-config");
  }
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(options.path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  auto fail = [&](std::string_view what) {
    std::string message = "coordination store: cannot open SQLite database '" + options.path +
                          "' (" + std::string(what) +
                          "): " + (db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close(db);
    return MakeStatus(StatusCode::kFailedPrecondition, message, "coord-store-unreachable");
  };
  if (rc != SQLITE_OK) return fail("open");
  sqlite3_busy_timeout(db, static_cast<int>(ToMs(options.busy_timeout)));
  // WAL: readers never block the writer; FULL sync so a committed revision
  // (and with it every fencing token handed out) survives a power cut too.
  if (!Exec(db, "PRAGMA journal_mode=WAL").ok()) return fail("enable WAL");
  if (!Exec(db, "PRAGMA synchronous=FULL").ok()) return fail("set synchronous");
  // An existing database needs no write at open: a process stopped inside a
  // write transaction must not keep other nodes from even starting.
  const bool has_schema =
      Stmt(db, "SELECT value FROM omnirelay_coord_meta WHERE name = 'schema_version'").Step() ==
      SQLITE_ROW;
  if (!has_schema) {
    if (auto status = Exec(db, "BEGIN IMMEDIATE"); !status.ok()) {
      if (status.code() == StatusCode::kUnavailable) {  // busy: another process writes
        sqlite3_close(db);
        return status;
      }
      return fail("lock for schema");
    }
    if (auto status = Exec(db, kSchema); !status.ok()) {
      Exec(db, "ROLLBACK").IgnoreError();
      return fail("create schema");
    }
    if (!Exec(db, "COMMIT").ok()) return fail("commit schema");
  }
  auto backend =
      std::shared_ptr<SqliteBackend>(new SqliteBackend(std::move(options), std::move(clock), db));
  return backend;
}

SqliteBackend::SqliteBackend(SqliteOptions options, std::shared_ptr<core::Clock> clock, sqlite3* db)
    : options_(std::move(options)), clock_(std::move(clock)), db_(db) {
  {
    Stmt max_id(db_, "SELECT COALESCE(MAX(id), 0) FROM events");
    if (max_id.Step() == SQLITE_ROW) last_event_id_ = max_id.Int(0);
  }
  poller_ = std::thread([this] { PollLoop(); });
}

SqliteBackend::~SqliteBackend() {
  {
    std::lock_guard lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  poller_.join();
  sqlite3_close(db_);
}

std::int64_t SqliteBackend::NowMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_->Now().time_since_epoch())
      .count();
}

void SqliteBackend::PollLoop() {
  std::unique_lock lock(stop_mu_);
  while (!stopping_) {
    stop_cv_.wait_for(lock, options_.poll_interval);
    if (stopping_) break;
    lock.unlock();
    ReapIfDue();
    PollEvents();
    lock.lock();
  }
}

void SqliteBackend::ReapIfDue() {
  bool due = false;
  {
    std::lock_guard lock(db_mu_);
    Stmt select(db_, "SELECT 1 FROM leases WHERE expires_at_ms + ? <= ? LIMIT 1");
    select.Bind(1, ToMs(options_.max_clock_skew)).Bind(2, NowMs());
    due = select.Step() == SQLITE_ROW;
  }
  if (!due) return;
  WriteScope scope(*this);  // reaps on entry
  if (scope.status().ok()) scope.Commit().IgnoreError();
}

void SqliteBackend::PollEvents() {
  std::lock_guard poll_lock(poll_mu_);
  std::map<Revision, std::vector<WatchEvent>> by_revision;
  {
    std::lock_guard lock(db_mu_);
    Stmt select(db_,
                "SELECT id, rev, type, key, value, create_rev, mod_rev, version, lease "
                "FROM events WHERE id > ? ORDER BY id LIMIT 4096");
    select.Bind(1, last_event_id_);
    while (select.Step() == SQLITE_ROW) {
      last_event_id_ = select.Int(0);
      WatchEvent event;
      event.type = select.Int(2) == 0 ? WatchEvent::Type::kPut : WatchEvent::Type::kDelete;
      event.kv.key = select.Blob(3);
      event.kv.value = select.Blob(4);
      event.kv.create_revision = select.Int(5);
      event.kv.mod_revision = select.Int(6);
      event.kv.version = select.Int(7);
      event.kv.lease = select.Int(8);
      by_revision[select.Int(1)].push_back(std::move(event));
    }
  }
  for (const auto& [revision, events] : by_revision) watches_.Dispatch(events);
}

core::StatusOr<LeaseGrant> SqliteBackend::GrantLease(core::Duration ttl) {
  if (ToMs(ttl) <= 0) {
    return MakeStatus(StatusCode::kInvalidArgument, "lease TTL must be at least 1 ms");
  }
  WriteScope scope(*this);
  if (!scope.status().ok()) return scope.status();
  Stmt bump(scope.db(),
            "UPDATE omnirelay_coord_meta SET value = value + 1 WHERE name = 'lease_seq'");
  if (int rc = bump.Step(); rc != SQLITE_DONE) return SqlError(scope.db(), rc, "lease id");
  Stmt read(scope.db(), "SELECT value FROM omnirelay_coord_meta WHERE name = 'lease_seq'");
  if (int rc = read.Step(); rc != SQLITE_ROW) return SqlError(scope.db(), rc, "lease id");
  const LeaseId id = read.Int(0);
  Stmt insert(scope.db(), "INSERT INTO leases(id, ttl_ms, expires_at_ms) VALUES (?, ?, ?)");
  insert.Bind(1, id).Bind(2, ToMs(ttl)).Bind(3, scope.now_ms() + ToMs(ttl));
  if (int rc = insert.Step(); rc != SQLITE_DONE) return SqlError(scope.db(), rc, "grant lease");
  if (auto status = scope.Commit(); !status.ok()) return status;
  return LeaseGrant{id, std::chrono::milliseconds(ToMs(ttl))};
}

core::StatusOr<core::Duration> SqliteBackend::KeepAlive(LeaseId lease) {
  WriteScope scope(*this);
  if (!scope.status().ok()) return scope.status();
  std::int64_t ttl_ms = 0;
  auto live = scope.LeaseLive(lease, &ttl_ms);
  if (!live.ok()) return live.status();
  if (!*live) {
    return MakeStatus(StatusCode::kNotFound, "lease not found (expired or revoked)",
                      "lease-not-found");
  }
  Stmt update(scope.db(), "UPDATE leases SET expires_at_ms = ? WHERE id = ?");
  update.Bind(1, scope.now_ms() + ttl_ms).Bind(2, lease);
  if (int rc = update.Step(); rc != SQLITE_DONE) return SqlError(scope.db(), rc, "renew lease");
  if (auto status = scope.Commit(); !status.ok()) return status;
  return core::Duration(std::chrono::milliseconds(ttl_ms));
}

core::Status SqliteBackend::RevokeLease(LeaseId lease) {
  WriteScope scope(*this);
  if (!scope.status().ok()) return scope.status();
  if (auto status = scope.DropLease(lease); !status.ok()) return status;
  return scope.Commit();
}

core::StatusOr<RangeResult> SqliteBackend::Range(std::string_view key, RangeOptions options) {
  std::lock_guard lock(db_mu_);
  // One read transaction so the revision and the rows are one snapshot.
  if (auto status = Exec(db_, "BEGIN"); !status.ok()) return status;
  struct EndRead {
    sqlite3* db;
    ~EndRead() { sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr); }
  } end_read{db_};
  RangeResult result;
  {
    Stmt read(db_, "SELECT value FROM omnirelay_coord_meta WHERE name = 'revision'");
    if (int rc = read.Step(); rc != SQLITE_ROW) return SqlError(db_, rc, "read revision");
    result.revision = read.Int(0);
  }
  std::string sql =
      "SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key >= ? AND key < ?";
  sql += options.sort_by_create ? " ORDER BY create_rev" : " ORDER BY key";
  if (options.limit > 0) sql += " LIMIT " + std::to_string(options.limit);
  Stmt select(db_, sql.c_str());
  std::string end = options.prefix ? PrefixEnd(key) : std::string(key) + std::string(1, '\0');
  if (options.prefix && end == std::string(1, '\0')) end = std::string(4096, '\xff');
  select.Bind(1, key).Bind(2, std::string_view(end));
  int rc;
  while ((rc = select.Step()) == SQLITE_ROW) {
    KeyValue kv;
    kv.key = select.Blob(0);
    kv.value = select.Blob(1);
    kv.create_revision = select.Int(2);
    kv.mod_revision = select.Int(3);
    kv.version = select.Int(4);
    kv.lease = select.Int(5);
    result.kvs.push_back(std::move(kv));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, rc, "range");
  return result;
}

core::StatusOr<TxnResult> SqliteBackend::Txn(const std::vector<Compare>& compares,
                                             const std::vector<TxnOp>& ops) {
  WriteScope scope(*this);
  if (!scope.status().ok()) return scope.status();
  for (const auto& compare : compares) {
    Stmt select(scope.db(), "SELECT create_rev, mod_rev FROM kv WHERE key = ?");
    select.Bind(1, std::string_view(compare.key));
    const int rc = select.Step();
    Revision actual = 0;
    if (rc == SQLITE_ROW) {
      actual = compare.target == Compare::Target::kCreateRevision ? select.Int(0) : select.Int(1);
    } else if (rc != SQLITE_DONE) {
      return SqlError(scope.db(), rc, "compare");
    }
    if (actual != compare.value) {
      // Keep what the reap did; the transaction itself changes nothing.
      auto revision = scope.CurrentRevision();
      if (!revision.ok()) return revision.status();
      if (auto status = scope.Commit(); !status.ok()) return status;
      return TxnResult{false, *revision};
    }
  }
  for (const auto& op : ops) {
    if (op.kind != TxnOp::Kind::kPut || op.lease == 0) continue;
    auto live = scope.LeaseLive(op.lease);
    if (!live.ok()) return live.status();
    if (!*live) {
      return MakeStatus(StatusCode::kNotFound, "lease not found (expired or revoked)",
                        "lease-not-found");
    }
  }
  for (const auto& op : ops) {
    if (op.kind == TxnOp::Kind::kPut) {
      auto revision = scope.WriteRevision();
      if (!revision.ok()) return revision.status();
      Stmt upsert(scope.db(),
                  "INSERT INTO kv(key, value, create_rev, mod_rev, version, lease) "
                  "VALUES (?1, ?2, ?3, ?3, 1, ?4) ON CONFLICT(key) DO UPDATE SET "
                  "value = excluded.value, mod_rev = excluded.mod_rev, version = version + 1, "
                  "lease = excluded.lease");
      upsert.Bind(1, std::string_view(op.key))
          .Bind(2, std::string_view(op.value))
          .Bind(3, *revision)
          .Bind(4, op.lease);
      if (int rc = upsert.Step(); rc != SQLITE_DONE) return SqlError(scope.db(), rc, "put");
      Stmt read(scope.db(), "SELECT create_rev, version FROM kv WHERE key = ?");
      read.Bind(1, std::string_view(op.key));
      if (int rc = read.Step(); rc != SQLITE_ROW) return SqlError(scope.db(), rc, "put");
      KeyValue kv{op.key, op.value, read.Int(0), *revision, read.Int(1), op.lease};
      if (auto status = scope.Record(WatchEvent::Type::kPut, kv); !status.ok()) return status;
    } else {
      Stmt exists(scope.db(), "SELECT 1 FROM kv WHERE key = ?");
      exists.Bind(1, std::string_view(op.key));
      if (exists.Step() != SQLITE_ROW) continue;
      auto revision = scope.WriteRevision();
      if (!revision.ok()) return revision.status();
      Stmt del(scope.db(), "DELETE FROM kv WHERE key = ?");
      del.Bind(1, std::string_view(op.key));
      if (int rc = del.Step(); rc != SQLITE_DONE) return SqlError(scope.db(), rc, "delete");
      KeyValue kv;
      kv.key = op.key;
      kv.mod_revision = *revision;
      if (auto status = scope.Record(WatchEvent::Type::kDelete, kv); !status.ok()) return status;
    }
  }
  auto revision = scope.CurrentRevision();
  if (!revision.ok()) return revision.status();
  if (auto status = scope.Commit(); !status.ok()) return status;
  return TxnResult{true, *revision};
}

core::StatusOr<WatchHandle> SqliteBackend::Watch(std::string_view prefix, WatchCallback callback) {
  // Catch up first so the new watch sees only what is committed after now.
  std::lock_guard poll_lock(poll_mu_);
  PollEvents();
  return watches_.Add(std::string(prefix), std::move(callback));
}

}  // namespace omnirelay::coord
