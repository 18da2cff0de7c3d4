#pragma once
// LeadershipStore: leases, elections with fencing tokens, and a small
// versioned key-value surface for control data, shaped like etcd v3's lease
// and election APIs and written once over the KvBackend seam (memory, SQLite
// or etcd; see kv_backend.h).
//
// Election (etcd's recipe): a candidate puts `<prefix>election/<scope>/#<lease>`
// attached to its lease; the live candidate key with the lowest
// create_revision is the leader. The leader's fencing token is that
// create_revision: the store's revision only grows, so every later
// leadership of any scope has a larger token, also across restarts of nodes
// and of the store (etcd and SQLite persist the revision).
//
// Fencing: every control write made as leader (FencedPut, Proclaim) is one
// store transaction conditional on the election key still existing with the
// same create_revision, so a leader that was paused past its lease (its key
// deleted, someone else elected) cannot write, even if it does not know yet.
// Locally, a leadership also stops acting at its lease deadline (the time
// the last successful grant/renewal was *sent* + TTL), before the store can
// expire the lease. Rejections return FAILED_PRECONDITION and are counted.
//
// Thread-safety: every method is thread-safe. Campaign blocks the calling
// thread; Observe/Watch callbacks run on the backend's delivery thread (see
// kv_backend.h) and must not block. Handles must be destroyed before the store.
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "omnirelay/coord/kv_backend.h"
#include "omnirelay/core/metrics.h"

namespace omnirelay::coord {

// Which backend and where (node config `omniRelay.leadership.store`).
struct StoreOptions {
  std::string kind = "sqlite";             // "memory" | "sqlite" | "etcd"
  std::string path;                        // sqlite: database file
  std::vector<std::string> endpoints;      // etcd: host:port list
  std::string key_prefix = "/omnirelay/";  // namespace of every key this store writes
  core::Duration max_clock_skew = std::chrono::milliseconds(250);  // sqlite
  core::Duration poll_interval = std::chrono::milliseconds(25);    // sqlite
  core::Duration dial_timeout = std::chrono::seconds(3);           // etcd
  core::Duration request_timeout = std::chrono::seconds(5);        // etcd
};

// `omnirelay.leadership.fenced_writes_rejected` (counter): control writes refused
// because the writer's leadership or lease was stale.
extern const core::MetricDescriptor kFencedWritesRejectedMetric;

struct Lease {
  LeaseId id = 0;
  core::Duration ttl{};
  // Local deadline: when the last successful grant/renewal was sent + TTL.
  // The store expires the lease no earlier than this.
  core::TimePoint expires_at{};
};

struct Leadership {
  std::string scope;
  std::string key;                 // election key in the store
  std::string value;               // what the leader proclaims (its node name by convention)
  std::int64_t fencing_token = 0;  // create_revision of `key`
  LeaseId lease = 0;
};

class LeadershipStore {
 public:
  // Opens the configured backend; a mis-set store fails here, fast, with a
  // message naming the path or endpoints (FAILED_PRECONDITION / UNAVAILABLE).
  static core::StatusOr<std::unique_ptr<LeadershipStore>> Open(
      const StoreOptions& options, std::shared_ptr<core::Clock> clock = nullptr,
      core::MetricsRegistry* metrics = nullptr);

  LeadershipStore(std::shared_ptr<KvBackend> backend, std::shared_ptr<core::Clock> clock,
                  std::string key_prefix = "/omnirelay/", core::MetricsRegistry* metrics = nullptr);
  ~LeadershipStore();

  KvBackend& backend() { return *backend_; }
  const std::shared_ptr<core::Clock>& clock() const { return clock_; }

  // --- leases ---
  core::StatusOr<Lease> GrantLease(core::Duration ttl);
  // One renewal. NOT_FOUND once the lease is gone (it never comes back).
  core::StatusOr<Lease> KeepAlive(LeaseId lease);
  core::Status RevokeLease(LeaseId lease);
  // The local deadline of a lease granted or renewed through this store.
  std::optional<core::TimePoint> LeaseDeadline(LeaseId lease) const;

  // --- election ---
  // Blocks until this lease's candidacy leads `scope`. Returns CANCELLED if
  // `stop` is requested first (the candidacy is withdrawn), ABORTED if the
  // lease expires while waiting, UNAVAILABLE if the store cannot be reached.
  // Campaigning again with the same lease resumes the same candidacy.
  core::StatusOr<Leadership> Campaign(std::string_view scope, LeaseId lease, std::string_view value,
                                      std::stop_token stop = {});
  // Like Campaign but never waits: NOT_FOUND-free answer of "did I win now";
  // returns std::nullopt (candidacy withdrawn) when someone else leads.
  core::StatusOr<std::optional<Leadership>> TryCampaign(std::string_view scope, LeaseId lease,
                                                        std::string_view value);
  // Changes the leader's value without an election. FAILED_PRECONDITION if
  // `leadership` is no longer current (counted as a fenced write rejected).
  core::Status Proclaim(const Leadership& leadership, std::string_view value);
  // Gives up leadership (deletes the election key if it is still ours; OK if
  // it already lapsed). The next candidate in line takes over.
  core::Status Resign(const Leadership& leadership);
  core::StatusOr<std::optional<Leadership>> Leader(std::string_view scope);
  using LeaderCallback = std::function<void(const std::optional<Leadership>& leader)>;
  // Calls `callback` with the current leader, then on every change of leader
  // (or of its value) in `scope`, in order.
  core::StatusOr<WatchHandle> Observe(std::string_view scope, LeaderCallback callback);

  // --- versioned control data (keys live under <prefix>kv/) ---
  core::StatusOr<std::optional<KeyValue>> Get(std::string_view key);
  core::StatusOr<std::vector<KeyValue>> List(std::string_view prefix);
  // Writes `value` if the key's mod_revision is `expected_revision` (0: the
  // key must not exist). Returns the new revision; FAILED_PRECONDITION on a
  // mismatch.
  core::StatusOr<Revision> CompareAndSwap(std::string_view key, std::string_view value,
                                          Revision expected_revision);
  // Writes `value` only while `leadership` is current (and its lease has
  // not passed its local deadline); optionally also CAS on the key. Stale →
  // FAILED_PRECONDITION with error code "stale-fencing-token", counted.
  core::StatusOr<Revision> FencedPut(const Leadership& leadership, std::string_view key,
                                     std::string_view value,
                                     std::optional<Revision> expected_revision = std::nullopt);
  // Events on keys under `prefix` (keys in the events are relative, as in Get).
  core::StatusOr<WatchHandle> Watch(std::string_view prefix, WatchCallback callback);

  // Control writes refused because the writer's leadership or lease was stale.
  std::int64_t fenced_writes_rejected() const { return fenced_writes_rejected_.load(); }

  // Validates a scope: `global`, `region/<name>` or `shard/<namespace>/<id>`
  // with names of [A-Za-z0-9._-]. INVALID_ARGUMENT otherwise.
  static core::Status ValidateScope(std::string_view scope);

 private:
  std::string ElectionPrefix(std::string_view scope) const;
  std::string CandidateKey(std::string_view scope, LeaseId lease) const;
  std::string DataKey(std::string_view key) const { return key_prefix_ + "kv/" + std::string(key); }
  core::Status RejectFenced(std::string_view why);
  // Puts the candidate key if absent; returns its create_revision.
  core::StatusOr<Revision> EnsureCandidate(const std::string& key, LeaseId lease,
                                           std::string_view value);
  // Current leader among the candidates of `scope`, and whether `key` is
  // still a candidate.
  core::StatusOr<std::optional<Leadership>> LeaderOf(std::string_view scope);
  bool LeaseLocallyExpired(LeaseId lease) const;

  std::shared_ptr<KvBackend> backend_;
  std::shared_ptr<core::Clock> clock_;
  std::string key_prefix_;
  core::Counter* fenced_rejected_metric_ = nullptr;
  std::atomic<std::int64_t> fenced_writes_rejected_{0};
  mutable std::mutex leases_mu_;
  std::map<LeaseId, Lease> leases_;
};

}  // namespace omnirelay::coord
