#pragma once
// A thin RAII layer over the SQLite C API for the replication log and the
// deterministic store (internal to this subsystem).
#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace omnirelay::replication::sqlite {

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

// Maps a SQLite result code to a status: FULL/IOERR -> UNAVAILABLE (write
// failed, retryable once space is back), CORRUPT/NOTADB -> DATA_LOSS,
// BUSY/LOCKED -> UNAVAILABLE, anything else INTERNAL.
absl::Status Error(sqlite3* db, int rc, std::string_view what);

// Opens (creating) `path` in WAL mode with `synchronous` (FULL or NORMAL) and
// a busy timeout.
absl::StatusOr<Db> Open(const std::string& path, bool full_sync, bool read_only = false);
absl::Status Exec(sqlite3* db, const std::string& sql);

class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql);
  ~Stmt();
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  int rc() const { return rc_; }
  void Reset();
  void Bind(int index, std::int64_t value);
  void Bind(int index, std::string_view text);
  void BindNull(int index);
  int Step();
  std::int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string_view Text(int column) const;
  bool IsNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// A table name used in SQL text: letters, digits and '_' only.
bool ValidIdentifier(std::string_view name);

}  // namespace omnirelay::replication::sqlite
