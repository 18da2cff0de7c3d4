#pragma once
// LeadershipManager: one node's leaderships. Holds one store lease, renews
// it, campaigns for the scopes this node may lead (by priority), observes
// every scope it cares about into a LeaderDirectory, promotes a regional
// leader to global when the global leader is lost, and performs `Promote`
// hand-overs.
//
// Scopes: `global`, `region/<name>`, `shard/<namespace>/<id>`.
//
// Election policy (on top of the store's first-come election):
//   * A candidate campaigns for a leaderless scope after a delay of
//     priority x step: priority 0 (the declared leader) at once. The step is
//     `bootstrap_step` until the scope has had a leader since this node
//     started (so the role map of the topology holds on bootstrap), then
//     `failover_step` (short, so failover stays within TTL + ~1 s).
//   * Promotion: a node that leads any region/<name> is also a candidate
//     for `global` with `promotion_priority` (when promote_regional_to_global).
//   * Promote(scope, node): a marker `promote/<scope>` = node in the store's
//     KV; the scope's current leader resigns (its token is dead from then on:
//     fenced), the named node campaigns at once, every other candidate holds
//     off until the marker's deadline (2 x TTL).
//
// Failure: if the store is unreachable, renewals fail; at the lease's local
// deadline every leadership lapses (dropped locally, never acted on again)
// and `ready_for_leader_work()` turns false; data traffic is not affected.
// When the store answers again the node takes a new lease and re-campaigns.
//
// Threading: every state change runs on one serial "drain" (whichever thread
// posts work while no drain is running runs it: store watch threads, clock
// timers, API callers); under ManualClock + the memory store, effects have
// happened when Advance()/the posting call returns. Snapshots for readers
// are copied under a small mutex.
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "omnirelay/coord/leadership_store.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/leadership/leader_directory.h"

namespace omnirelay::leadership {

struct Candidacy {
  std::string scope;
  int priority = 0;  // 0 = declared leader; larger waits longer
};

// One observed change of a scope's leader.
struct LeadershipChange {
  std::string scope;
  std::string previous;  // the previous leader's node id ("" = none)
  std::string leader;    // the new leader's node id ("" = leaderless)
  std::int64_t previous_fencing_token = 0;
  std::int64_t fencing_token = 0;  // 0 when leaderless
  core::TimePoint at{};
};

struct LeadershipOptions {
  std::string node_id;
  coord::StoreOptions store;
  core::Duration lease_ttl = std::chrono::seconds(10);
  core::Duration renew_interval{};  // 0 = lease_ttl / 3
  core::Duration bootstrap_step = std::chrono::seconds(2);
  core::Duration failover_step = std::chrono::milliseconds(250);
  std::vector<Candidacy> candidacies;
  bool promote_regional_to_global = true;
  int promotion_priority = 1;
  // Scopes to observe (besides the candidacies and `global`), e.g. every
  // region, so the directory and /omnirelay/control/leaders show them.
  std::vector<std::string> observed_scopes;

  // Where observed leaders are recorded; shared with the data plane (leader
  // outbounds made before the manager). Made by Create when null.
  std::shared_ptr<LeaderDirectory> directory;
  // Called once per observed leadership change (another leader, another
  // fencing token, or none), on the manager's serial drain, after the log
  // event: the node records it as a span (docs/leadership.md "Visibility").
  std::function<void(const LeadershipChange&)> on_change;
  // The "fast" profile: 2 s lease (tests, scenarios).
  static LeadershipOptions Fast();
};

struct ScopeState {
  std::string scope;
  std::optional<LeaderInfo> leader;  // as last observed
  bool candidate = false;
  int priority = 0;
  bool held = false;                                // this node leads it now
  std::int64_t fencing_token = 0;                   // ours when held, else the leader's
  std::optional<core::TimePoint> lease_expires_at;  // ours when held
};

class LeadershipManager : public std::enable_shared_from_this<LeadershipManager> {
 public:
  static std::shared_ptr<LeadershipManager> Create(LeadershipOptions options,
                                                   std::shared_ptr<coord::LeadershipStore> store,
                                                   std::shared_ptr<core::Clock> clock,
                                                   core::MetricsRegistry* metrics = nullptr);
  ~LeadershipManager();

  // Validates scopes, starts observing and campaigning. INVALID_ARGUMENT for
  // a bad scope; store failures are not fatal here (retried in background).
  core::Status Start();
  // Resigns every leadership, revokes the lease, stops timers and watches.
  void Stop();
  // Simulator/test hook: stops all activity *without* resigning or revoking,
  // as kill -9 or a pause would; the store expires the lease on its own.
  void Freeze();

  std::vector<ScopeState> Scopes() const;
  std::optional<coord::Leadership> Held(std::string_view scope) const;
  bool ready_for_leader_work() const;
  const std::string& node_id() const { return options_.node_id; }
  std::shared_ptr<const LeaderDirectory> directory() const { return directory_; }

  // Asks `node` to take over `scope` (any node may call it). FAILED_PRECONDITION
  // if the store refuses; the hand-over itself happens asynchronously.
  core::Status Promote(std::string_view scope, std::string_view node);
  // A control write as leader of `scope`: FAILED_PRECONDITION if not held
  // (or fenced by the store).
  core::StatusOr<coord::Revision> FencedPut(std::string_view scope, std::string_view key,
                                            std::string_view value);

 private:
  LeadershipManager(LeadershipOptions options, std::shared_ptr<coord::LeadershipStore> store,
                    std::shared_ptr<core::Clock> clock, core::MetricsRegistry* metrics);
  struct Scope;
  void Halt(bool graceful);
  void Post(std::function<void()> work);
  void Schedule(core::TimePoint when, std::function<void()> work);
  // Serial-drain handlers.
  void EnsureLease();
  void Renew();
  void LapseIfExpired();
  void OnLeader(const std::string& scope, const std::optional<coord::Leadership>& leader);
  // Updates the observed leader, directory, metrics and log of `scope`.
  void RecordLeader(Scope& scope, const std::optional<coord::Leadership>& leader);
  void OnPromoteMarker(const std::string& scope, const std::string& value);
  void Consider(const std::string& scope);
  void TryWin(const std::string& scope, std::uint64_t epoch);
  void DropHeld(const std::string& scope, std::string_view why);
  void PublishLocked();
  int EffectivePriority(const Scope& scope) const;
  Scope& ScopeFor(const std::string& name);

  LeadershipOptions options_;
  std::shared_ptr<coord::LeadershipStore> store_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<LeaderDirectory> directory_ = std::make_shared<LeaderDirectory>();

  // Serial drain.
  std::mutex queue_mu_;
  std::deque<std::function<void()>> queue_;
  bool draining_ = false;
  bool stopped_ = false;

  // Drain-owned state.
  std::map<std::string, std::unique_ptr<Scope>> scopes_;
  std::optional<coord::Lease> lease_;
  std::vector<coord::WatchHandle> watches_;
  std::set<core::TimerId> timers_;  // guarded by timers_mu_
  std::mutex timers_mu_;

  // Reader snapshot.
  mutable std::mutex view_mu_;
  std::vector<ScopeState> view_;
  std::map<std::string, coord::Leadership, std::less<>> held_;
  bool ready_ = false;

  // Metrics (null without a registry).
  core::MetricsRegistry* metrics_;
  core::Histogram* renew_latency_ = nullptr;
  core::Counter* renew_failures_ = nullptr;
};

extern const core::MetricDescriptor kLeadershipChangesMetric;
extern const core::MetricDescriptor kLeadershipTermMetric;
extern const core::MetricDescriptor kLeadershipIsLeaderMetric;
extern const core::MetricDescriptor kLeaseRenewDurationMetric;
extern const core::MetricDescriptor kLeaseRenewFailuresMetric;

}  // namespace omnirelay::leadership
