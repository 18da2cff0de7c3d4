#pragma once
// KvBackend on one SQLite database file shared by the processes of one host:
// the embedded default, so a node needs nothing else installed.
//
// Every write is one `BEGIN IMMEDIATE` transaction in WAL mode: SQLite's
// database lock serialises writers across processes, so the revision counter
// (a row in the file) and compare-and-swap are linearizable among all the
// processes that open the file. The revision lives in the file, so fencing
// tokens stay monotonic across process restarts; deleting the file resets
// them (documented in docs/leadership.md).
//
// Lease expiry uses the wall clock of whichever process touches the file: a
// lease row stores `expires_at` (writer's clock + TTL). A lease counts as
// gone for renewals once `now >= expires_at`, but its keys are only deleted
// ("reaped") once `now >= expires_at + max_clock_skew`, by the next write of
// any process or by a background poller. The holder, meanwhile, stops acting
// at its own deadline (send time + TTL, tracked by LeadershipStore), which is
// never later than `expires_at`. So as long as the clocks of the processes
// differ by less than max_clock_skew, an old holder has stopped acting before
// anyone else can take its place.
//
// Watches: committed changes are appended to an `events` table; a poller
// thread per backend reads new rows every poll_interval and dispatches them,
// so watch latency is up to one poll interval. The poller also reaps expired
// leases when nobody writes.
#include <atomic>
#include <condition_variable>
#include <thread>

#include "omnirelay/coord/kv_backend.h"

struct sqlite3;

namespace omnirelay::coord {

struct SqliteOptions {
  std::string path;  // database file; its directory must exist
  // How far apart the wall clocks of the processes sharing the file may be.
  core::Duration max_clock_skew = std::chrono::milliseconds(250);
  // Watch latency and idle-reaping period.
  core::Duration poll_interval = std::chrono::milliseconds(25);
  // How long a write waits for another process's write lock before
  // failing with UNAVAILABLE.
  core::Duration busy_timeout = std::chrono::seconds(5);
};

class SqliteBackend final : public KvBackend {
 public:
  // Opens (creating if needed) the database. Fails fast with
  // FAILED_PRECONDITION naming the path when it cannot be opened or is not
  // an OmniRelay coordination database.
  static core::StatusOr<std::shared_ptr<SqliteBackend>> Open(SqliteOptions options,
                                                             std::shared_ptr<core::Clock> clock);
  ~SqliteBackend() override;
  SqliteBackend(const SqliteBackend&) = delete;
  SqliteBackend& operator=(const SqliteBackend&) = delete;

  std::string_view kind() const override { return "sqlite"; }
  core::StatusOr<LeaseGrant> GrantLease(core::Duration ttl) override;
  core::StatusOr<core::Duration> KeepAlive(LeaseId lease) override;
  core::Status RevokeLease(LeaseId lease) override;
  core::StatusOr<RangeResult> Range(std::string_view key, RangeOptions options) override;
  core::StatusOr<TxnResult> Txn(const std::vector<Compare>& compares,
                                const std::vector<TxnOp>& ops) override;
  core::StatusOr<WatchHandle> Watch(std::string_view prefix, WatchCallback callback) override;

 private:
  SqliteBackend(SqliteOptions options, std::shared_ptr<core::Clock> clock, sqlite3* db);
  class WriteScope;
  std::int64_t NowMs() const;
  void PollLoop();
  // Reads events committed since the last poll and dispatches them.
  void PollEvents();
  void ReapIfDue();

  SqliteOptions options_;
  std::shared_ptr<core::Clock> clock_;
  sqlite3* db_;
  std::mutex db_mu_;                // one connection; SQLite itself serialises processes
  std::recursive_mutex poll_mu_;    // serialises dispatch; recursive for Watch() from a callback
  std::int64_t last_event_id_ = 0;  // guarded by poll_mu_
  WatchRegistry watches_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread poller_;
};

}  // namespace omnirelay::coord
