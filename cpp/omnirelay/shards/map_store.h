#pragma once
// Versioned shard maps in the coordination store.
//
//   * Key: `shards/<namespace>/map` in the LeadershipStore's KV (under
//     `<prefix>kv/`); value: ShardMap::ToJson().
//   * Writing (PublishShardMap): only as the leader of the namespace's
//     leadership scope, one store transaction that is conditional on the
//     leader's election key (its fencing token) AND on the map key's
//     mod_revision (compare-and-swap): a deposed leader's write is refused
//     (FAILED_PRECONDITION, error code "stale-fencing-token", counted in
//     omnirelay.leadership.fenced_writes_rejected and
//     omnirelay.shards.map_writes_rejected{reason}), and so is a write based
//     on a version someone else replaced meanwhile ("revision-mismatch").
//     Versions count 1, 2, 3, ... per namespace.
//   * Reading (ShardMapWatcher): every node watches `shards/` and offers each
//     map it sees to its ShardMapHolder, which keeps the newest version per
//     namespace (older or equal versions are ignored, so out-of-order or
//     repeated deliveries cannot roll a node back).
//   * ShardManager: the control loop of one node. For each namespace whose
//     scope this node leads, it computes the map from the live members and
//     writes a new version when the members (or the spec) differ from the
//     stored map's, keeping earlier rebalance moves; it applies pending
//     rebalance requests (`shards/<ns>/rebalance/<shard>`, written by any
//     node: on demand, or by an owner whose shard is over its QPS budget).
//
// Threading: ShardMapHolder is read on the data path (a mutex held for one
// shared_ptr copy; see peers' SnapshotCell for why not atomic<shared_ptr>);
// watcher callbacks run on the store's delivery thread; ShardManager
// reconciles on its own thread (or the caller's, ReconcileNow).
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "omnirelay/coord/leadership_store.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/leadership/manager.h"
#include "omnirelay/shards/rebalance.h"
#include "omnirelay/shards/shard_map.h"

namespace omnirelay::shards {

extern const core::MetricDescriptor kMapVersionMetric;         // gauge {namespace}
extern const core::MetricDescriptor kMapChangesMetric;         // counter {namespace}
extern const core::MetricDescriptor kMapWritesMetric;          // counter {namespace}
extern const core::MetricDescriptor kMapWritesRejectedMetric;  // counter {namespace, reason}
extern const core::MetricDescriptor kRebalancesMetric;         // counter {namespace, reason}

class ShardRouter;

// `shards/<ns>/map`
std::string MapKey(std::string_view ns);

// The newest map per namespace on this node.
class ShardMapHolder {
 public:
  explicit ShardMapHolder(core::MetricsRegistry* metrics = nullptr) : metrics_(metrics) {}
  // Null until a map of `ns` was seen.
  std::shared_ptr<const ShardMap> Get(std::string_view ns) const;
  std::map<std::string, std::shared_ptr<const ShardMap>> All() const;
  // Installs `map` if its version is newer than the held one; true if installed.
  bool Offer(std::shared_ptr<const ShardMap> map);
  using Listener = std::function<void(const ShardMap& installed)>;
  // Called (outside the lock, on the offering thread) after each install.
  void AddListener(Listener listener);
  // Same, with the version it replaced (0: the first) — for change spans.
  using ChangeListener = std::function<void(const ShardMap& installed, std::int64_t previous)>;
  void AddChangeListener(ChangeListener listener);

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const ShardMap>, std::less<>> maps_;
  std::vector<Listener> listeners_;
  std::vector<ChangeListener> change_listeners_;
  core::MetricsRegistry* metrics_;
};

// Reads the stored map of `ns` with its mod_revision (nullopt: none yet).
struct StoredMap {
  ShardMap map;
  coord::Revision revision = 0;
};
core::StatusOr<std::optional<StoredMap>> ReadShardMap(coord::LeadershipStore& store,
                                                      std::string_view ns);

// Writes `map` as the next version after `previous` (nullopt: the first)
// while `leadership` is current. Stamps version, writer, token and time.
// Returns the map as written. Errors: FAILED_PRECONDITION with error code
// "stale-fencing-token" or "revision-mismatch"; UNAVAILABLE (store).
core::StatusOr<ShardMap> PublishShardMap(coord::LeadershipStore& store,
                                         const coord::Leadership& leadership, ShardMap map,
                                         const std::optional<StoredMap>& previous,
                                         core::MetricsRegistry* metrics = nullptr);

// `shards/<ns>/rebalance/<shard>`
std::string RebalanceKey(std::string_view ns, std::uint32_t shard);

// Asks the namespace's leader to move `shard`'s ownership to `to` (one of
// its replicas) or, with `to` empty, to its cooler replica by live load
// (rebalance.h ChooseFewestPending: fewest pending calls, then lower QPS,
// then the earlier replica; by shards owned while no node has reported
// load). Any node may ask; the
// leader applies it on its next reconcile (the request key's watch wakes
// it). ABORTED ("rebalance-pending") while an earlier request of the same
// shard is not applied yet.
core::Status RequestRebalance(coord::LeadershipStore& store, std::string_view ns,
                              std::uint32_t shard, std::string_view to, std::string_view reason,
                              std::string_view requested_by, double qps = 0);

// Watches `shards/` and feeds a holder (initial read included).
class ShardMapWatcher {
 public:
  static core::StatusOr<std::unique_ptr<ShardMapWatcher>> Start(
      std::shared_ptr<coord::LeadershipStore> store, std::shared_ptr<ShardMapHolder> holder);
  ~ShardMapWatcher() { handle_.Reset(); }
  // Re-reads every stored map (also done on a watch resync).
  void Resync();

 private:
  ShardMapWatcher(std::shared_ptr<coord::LeadershipStore> store,
                  std::shared_ptr<ShardMapHolder> holder)
      : store_(std::move(store)), holder_(std::move(holder)) {}
  void OfferJson(const std::string& value);
  std::shared_ptr<coord::LeadershipStore> store_;
  std::shared_ptr<ShardMapHolder> holder_;
  coord::WatchHandle handle_;
};

// One namespace as configured (`omniRelay.shards.namespaces.<ns>`).
struct NamespaceOptions {
  ShardSpec spec;
  std::string leader_scope = "global";  // whose leader writes this namespace's map
  std::string owner_role;               // only members with this role own shards ("" = all)
  double budget_qps = 0;                // per-shard QPS budget (0 = none); shown, metered
  std::string service;                  // calls to this service are routed by shard
  std::string local_service;            // the owner serves them with this service's procedure
};

// A member as the manager needs it.
struct ShardMember {
  ShardNode node;
  std::vector<std::string> roles;
};
using MemberSource = std::function<std::vector<ShardMember>()>;

struct ShardManagerOptions {
  std::string node_id;
  std::vector<NamespaceOptions> namespaces;
  core::Duration reconcile_interval = std::chrono::seconds(1);
  // An over-budget shard is not moved again automatically within this time
  // of its last move (no flapping between two hot replicas).
  core::Duration rebalance_cooldown = std::chrono::seconds(30);
  // This node's pending calls (admitted calls in flight), published with
  // its per-shard QPS as its load report on every reconcile; unset = no
  // report from this node.
  std::function<std::int64_t()> pending{};
  // Called on the leader for every move it applies, after the version that
  // carries it is written (spans; the decision is also in the map).
  std::function<void(const RebalanceDecision&)> on_rebalance{};
};

class ShardManager {
 public:
  ShardManager(ShardManagerOptions options, std::shared_ptr<coord::LeadershipStore> store,
               std::shared_ptr<leadership::LeadershipManager> leadership, MemberSource members,
               std::shared_ptr<ShardMapHolder> holder, std::shared_ptr<core::Clock> clock,
               core::MetricsRegistry* metrics = nullptr);
  ~ShardManager() { Stop(); }

  // Starts the background loop: a reconcile every reconcile_interval and
  // soon after each Poke().
  void Start();
  void Stop();
  // Asks for a reconcile soon (membership changed).
  void Poke();
  // One reconcile pass on the calling thread: for every namespace this node
  // leads, writes a new map version if the inputs changed. Returns the
  // namespaces written.
  std::vector<std::string> ReconcileNow();

  // The meters an owner checks against the budgets (optional; without it
  // no automatic rebalance is requested by this node).
  void SetRouter(std::shared_ptr<const ShardRouter> router) { router_ = std::move(router); }

  const ShardManagerOptions& options() const { return options_; }
  const NamespaceOptions* Find(std::string_view ns) const;

 private:
  std::optional<std::string> ReconcileNamespace(const NamespaceOptions& ns);
  // Leader: applies pending rebalance requests to `map`; returns the request
  // keys (with their revisions) it applied or dropped.
  std::vector<std::pair<coord::KeyValue, std::string>> ApplyRebalances(const NamespaceOptions& ns,
                                                                       ShardMap& map);
  // Owner: requests a move of each shard it serves above the budget.
  void CheckBudgets(const NamespaceOptions& ns);
  // Every node: writes its load report for `ns`.
  void PublishOwnLoad(const NamespaceOptions& ns);

  const ShardManagerOptions options_;
  std::shared_ptr<coord::LeadershipStore> store_;
  std::shared_ptr<leadership::LeadershipManager> leadership_;
  MemberSource members_;
  std::shared_ptr<ShardMapHolder> holder_;
  std::shared_ptr<core::Clock> clock_;
  core::MetricsRegistry* metrics_;
  std::shared_ptr<const ShardRouter> router_;
  coord::WatchHandle requests_watch_;
  std::vector<RebalanceDecision> decided_;  // this pass's moves (under reconcile_mu_)

  std::mutex reconcile_mu_;  // one pass at a time
  std::mutex loop_mu_;
  std::condition_variable loop_cv_;
  bool poked_ = false;
  bool stopping_ = false;
  std::thread loop_;
};

}  // namespace omnirelay::shards

namespace omnirelay::shards {

// Adds the load-aware rebalance view to a ShardRouter::ToJson document
// (GET /omnirelay/control/shards), per namespace: `lastRebalance` (the held
// map's decision), `loads` (every node's latest report: pending, qps, age),
// `budget` (the runtime override) and, with an override, the effective
// `budgetQps` / per-shard `budgetQps` and `overBudget`.
void AddRebalanceView(nlohmann::json& document, coord::LeadershipStore& store,
                      const std::vector<NamespaceOptions>& namespaces, const ShardMapHolder& holder,
                      core::TimePoint now);

}  // namespace omnirelay::shards
