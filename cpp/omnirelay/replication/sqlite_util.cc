#include "omnirelay/replication/sqlite_util.h"

#include <cctype>

namespace omnirelay::replication::sqlite {

absl::Status Error(sqlite3* db, int rc, std::string_view what) {
  std::string message = std::string(what) + ": " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)) +
                        " (sqlite " + std::to_string(rc) + ")";
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
      return absl::UnavailableError(message);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::StatusOr<Db> Open(const std::string& path, bool full_sync, bool read_only) {
  sqlite3* raw = nullptr;
  const int flags = read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  Db db(raw);
  if (rc != SQLITE_OK) return Error(raw, rc, "opening " + path);
  sqlite3_busy_timeout(raw, 5000);
  if (!read_only) {
    if (auto s = Exec(raw, "PRAGMA journal_mode=WAL"); !s.ok()) return s;
  }
  if (auto s = Exec(raw, full_sync ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
      !s.ok()) {
    return s;
  }
  return db;
}

absl::Status Exec(sqlite3* db, const std::string& sql) {
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  sqlite3_free(error);
  if (rc != SQLITE_OK) return Error(db, rc, sql.substr(0, 60));
  return absl::OkStatus();
}

Stmt::Stmt(sqlite3* db, const std::string& sql) : db_(db) {
  rc_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr);
}

Stmt::~Stmt() { sqlite3_finalize(stmt_); }

void Stmt::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
  rc_ = stmt_ ? SQLITE_OK : rc_;
}

void Stmt::Bind(int index, std::int64_t value) {
  if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_int64(stmt_, index, value);
}

void Stmt::Bind(int index, std::string_view text) {
  if (rc_ == SQLITE_OK) {
    rc_ =
        sqlite3_bind_text64(stmt_, index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  }
}

void Stmt::BindNull(int index) {
  if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_null(stmt_, index);
}

int Stmt::Step() { return rc_ == SQLITE_OK ? sqlite3_step(stmt_) : rc_; }

std::string_view Stmt::Text(int column) const {
  const auto* data = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
  const int size = sqlite3_column_bytes(stmt_, column);
  return data ? std::string_view(data, static_cast<size_t>(size)) : std::string_view();
}

bool ValidIdentifier(std::string_view name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
  }
  return true;
}

}  // namespace omnirelay::replication::sqlite
