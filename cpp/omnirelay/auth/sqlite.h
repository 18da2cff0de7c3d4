#pragma once
// A small RAII wrapper over the SQLite C API: just what the user store needs.
//
// Database owns one sqlite3 connection (closed in the destructor); Statement
// owns one prepared statement (finalized in the destructor). Errors come back
// as absl::Status carrying sqlite3_errmsg(), never as exceptions.
// Thread-safety: a Database may be shared between threads (the connection is
// opened in serialized mode), a Statement may not.
#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "omnirelay/core/status.h"

namespace omnirelay::auth {

class Statement;

class Database {
 public:
  // Opens (creating if needed) the database file at `path`; ":memory:" works.
  // Sets a busy timeout so that several processes sharing the file wait for
  // each other's write locks instead of failing with SQLITE_BUSY at once.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs one or more statements without results (DDL, PRAGMA, BEGIN/COMMIT).
  absl::Status Exec(const std::string& sql);
  absl::StatusOr<Statement> Prepare(const std::string& sql);

  sqlite3* handle() const { return db_; }
  // The error message of the last failed call, prefixed with `what`.
  absl::Status Error(std::string_view what) const;

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  sqlite3* db_;
};

class Statement {
 public:
  Statement(Statement&& other) noexcept : db_(other.db_), stmt_(other.stmt_) {
    other.stmt_ = nullptr;
  }
  Statement& operator=(Statement&&) = delete;
  Statement(const Statement&) = delete;
  ~Statement();

  // Parameters are 1-based, as in SQLite. Text is copied (SQLITE_TRANSIENT).
  absl::Status BindText(int index, std::string_view value);
  // Advances: true when a row is available, false when done.
  absl::StatusOr<bool> Step();
  // Steps a statement that must not produce rows (INSERT/UPDATE/DELETE).
  absl::Status Run();
  std::string ColumnText(int column) const;
  int64_t ColumnInt(int column) const;

 private:
  friend class Database;
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

}  // namespace omnirelay::auth
