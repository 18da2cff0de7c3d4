#include "omnirelay/shards/map_store.h"

#include <algorithm>

#include "omnirelay/core/logging.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/shards/router.h"
#include "omnirelay/shards/strategy.h"

namespace omnirelay::shards {

const core::MetricDescriptor kMapVersionMetric{
    "omnirelay.shards.map_version", core::MetricKind::kGauge, "1",
    "Version of the shard map this node holds, per namespace"};
const core::MetricDescriptor kMapChangesMetric{
    "omnirelay.shards.map_changes", core::MetricKind::kCounter, "1",
    "Shard map versions installed on this node, per namespace"};
const core::MetricDescriptor kMapWritesMetric{
    "omnirelay.shards.map_writes", core::MetricKind::kCounter, "1",
    "Shard map versions this node wrote as the namespace's leader"};
const core::MetricDescriptor kMapWritesRejectedMetric{
    "omnirelay.shards.map_writes_rejected", core::MetricKind::kCounter, "1",
    "Shard map writes the store refused (reason: stale-fencing-token, revision-mismatch, ...)"};

const core::MetricDescriptor kRebalancesMetric{
    "omnirelay.shards.rebalances", core::MetricKind::kCounter, "1",
    "Shard ownership moves applied by the namespace's leader (reason: manual, over-budget)"};

std::string MapKey(std::string_view ns) { return "shards/" + std::string(ns) + "/map"; }

std::string RebalanceKey(std::string_view ns, std::uint32_t shard) {
  return "shards/" + std::string(ns) + "/rebalance/" + std::to_string(shard);
}

core::Status RequestRebalance(coord::LeadershipStore& store, std::string_view ns,
                              std::uint32_t shard, std::string_view to, std::string_view reason,
                              std::string_view requested_by, double qps) {
  const std::string key = RebalanceKey(ns, shard);
  auto current = store.Get(key);
  if (!current.ok()) return current.status();
  coord::Revision expected = 0;
  if (current->has_value()) {
    auto json = nlohmann::json::parse((*current)->value, nullptr, false);
    if (!json.is_object() || !json.value("done", false)) {
      return core::MakeStatus(core::StatusCode::kAborted,
                              "a rebalance of shard " + std::to_string(shard) + " of '" +
                                  std::string(ns) + "' is already pending",
                              "rebalance-pending");
    }
    expected = (*current)->mod_revision;
  }
  const nlohmann::json request = {{"namespace", ns},
                                  {"shard", shard},
                                  {"to", to},
                                  {"reason", reason},
                                  {"qps", qps},
                                  {"requestedBy", requested_by},
                                  {"requestedAt", core::FormatTimestamp(store.clock()->Now())},
                                  {"done", false}};
  auto written = store.CompareAndSwap(key, request.dump(), expected);
  if (!written.ok()) {
    if (written.status().code() == core::StatusCode::kFailedPrecondition) {
      return core::MakeStatus(core::StatusCode::kAborted,
                              "a rebalance of shard " + std::to_string(shard) + " of '" +
                                  std::string(ns) + "' is already pending",
                              "rebalance-pending");
    }
    return written.status();
  }
  core::LogInfo("shards.rebalance.requested", {{"namespace", ns},
                                               {"shard", shard},
                                               {"to", to},
                                               {"reason", reason},
                                               {"qps", qps},
                                               {"requestedBy", requested_by}});
  return absl::OkStatus();
}

// --- ShardMapHolder ---

std::shared_ptr<const ShardMap> ShardMapHolder::Get(std::string_view ns) const {
  std::lock_guard lock(mu_);
  auto it = maps_.find(ns);
  return it == maps_.end() ? nullptr : it->second;
}

std::map<std::string, std::shared_ptr<const ShardMap>> ShardMapHolder::All() const {
  std::lock_guard lock(mu_);
  return {maps_.begin(), maps_.end()};
}

bool ShardMapHolder::Offer(std::shared_ptr<const ShardMap> map) {
  std::vector<Listener> listeners;
  std::vector<ChangeListener> change_listeners;
  std::shared_ptr<const ShardMap> replaced;  // released outside the lock
  {
    std::lock_guard lock(mu_);
    auto& slot = maps_[map->spec.ns];
    if (slot && slot->version >= map->version) return false;
    replaced = std::move(slot);
    slot = map;
    listeners = listeners_;
    change_listeners = change_listeners_;
  }
  if (metrics_ != nullptr) {
    const core::Tags tags{{"namespace", map->spec.ns}};
    metrics_->GetGauge(kMapVersionMetric, tags).Set(static_cast<double>(map->version));
    metrics_->GetCounter(kMapChangesMetric, tags).Add();
  }
  core::LogInfo("shards.map.installed", {{"namespace", map->spec.ns},
                                         {"version", map->version},
                                         {"previous", replaced ? replaced->version : 0},
                                         {"writtenBy", map->written_by},
                                         {"nodes", map->nodes.size()}});
  for (const auto& listener : listeners) listener(*map);
  for (const auto& listener : change_listeners) listener(*map, replaced ? replaced->version : 0);
  return true;
}

void ShardMapHolder::AddListener(Listener listener) {
  std::lock_guard lock(mu_);
  listeners_.push_back(std::move(listener));
}

void ShardMapHolder::AddChangeListener(ChangeListener listener) {
  std::lock_guard lock(mu_);
  change_listeners_.push_back(std::move(listener));
}

// --- store access ---

core::StatusOr<std::optional<StoredMap>> ReadShardMap(coord::LeadershipStore& store,
                                                      std::string_view ns) {
  auto kv = store.Get(MapKey(ns));
  if (!kv.ok()) return kv.status();
  if (!kv->has_value()) return std::optional<StoredMap>();
  auto json = nlohmann::json::parse((*kv)->value, nullptr, /*allow_exceptions=*/false);
  auto map = ShardMap::FromJson(json);
  if (!map.ok()) {
    return absl::DataLossError("stored shard map of '" + std::string(ns) +
                               "' is unreadable: " + std::string(map.status().message()));
  }
  return std::optional<StoredMap>(StoredMap{std::move(*map), (*kv)->mod_revision});
}

core::StatusOr<ShardMap> PublishShardMap(coord::LeadershipStore& store,
                                         const coord::Leadership& leadership, ShardMap map,
                                         const std::optional<StoredMap>& previous,
                                         core::MetricsRegistry* metrics) {
  map.version = previous ? previous->map.version + 1 : 1;
  map.written_by = leadership.value;
  map.fencing_token = leadership.fencing_token;
  map.written_at = core::FormatTimestamp(store.clock()->Now());
  const core::Tags tags{{"namespace", map.spec.ns}};
  auto written = store.FencedPut(leadership, MapKey(map.spec.ns), map.ToJson().dump(),
                                 previous ? previous->revision : 0);
  if (!written.ok()) {
    const std::string reason = core::ErrorCode(written.status()).value_or("store-error");
    if (metrics != nullptr) {
      auto reject_tags = tags;
      reject_tags["reason"] = reason;
      metrics->GetCounter(kMapWritesRejectedMetric, reject_tags).Add();
    }
    core::LogWarn("shards.map.write_rejected",
                  {{"namespace", map.spec.ns},
                   {"version", map.version},
                   {"fencingToken", leadership.fencing_token},
                   {"reason", reason},
                   {"error", std::string(written.status().message())}});
    return written.status();
  }
  if (metrics != nullptr) metrics->GetCounter(kMapWritesMetric, tags).Add();
  core::LogInfo("shards.map.written", {{"namespace", map.spec.ns},
                                       {"version", map.version},
                                       {"revision", *written},
                                       {"fencingToken", leadership.fencing_token},
                                       {"nodes", map.nodes.size()},
                                       {"strategy", StrategyName(map.spec.strategy)}});
  return map;
}

// --- ShardMapWatcher ---

core::StatusOr<std::unique_ptr<ShardMapWatcher>> ShardMapWatcher::Start(
    std::shared_ptr<coord::LeadershipStore> store, std::shared_ptr<ShardMapHolder> holder) {
  std::unique_ptr<ShardMapWatcher> watcher(
      new ShardMapWatcher(std::move(store), std::move(holder)));
  ShardMapWatcher* self = watcher.get();
  // Watch first, then read: a map written in between is seen by one or both.
  auto handle =
      self->store_->Watch("shards/", [self](const std::vector<coord::WatchEvent>& events) {
        if (events.empty()) {
          self->Resync();
          return;
        }
        for (const auto& event : events) {
          if (event.type != coord::WatchEvent::Type::kPut) continue;
          if (!event.kv.key.ends_with("/map")) continue;
          self->OfferJson(event.kv.value);
        }
      });
  if (!handle.ok()) return handle.status();
  self->handle_ = std::move(*handle);
  self->Resync();
  return watcher;
}

void ShardMapWatcher::Resync() {
  auto listed = store_->List("shards/");
  if (!listed.ok()) {
    core::LogWarn("shards.map.resync_failed", {{"error", std::string(listed.status().message())}});
    return;
  }
  for (const auto& kv : *listed) {
    if (kv.key.ends_with("/map")) OfferJson(kv.value);
  }
}

void ShardMapWatcher::OfferJson(const std::string& value) {
  auto json = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
  auto map = ShardMap::FromJson(json);
  if (!map.ok()) {
    core::LogWarn("shards.map.unreadable", {{"error", std::string(map.status().message())}});
    return;
  }
  holder_->Offer(std::make_shared<const ShardMap>(std::move(*map)));
}

// --- ShardManager ---

ShardManager::ShardManager(ShardManagerOptions options,
                           std::shared_ptr<coord::LeadershipStore> store,
                           std::shared_ptr<leadership::LeadershipManager> leadership,
                           MemberSource members, std::shared_ptr<ShardMapHolder> holder,
                           std::shared_ptr<core::Clock> clock, core::MetricsRegistry* metrics)
    : options_(std::move(options)),
      store_(std::move(store)),
      leadership_(std::move(leadership)),
      members_(std::move(members)),
      holder_(std::move(holder)),
      clock_(std::move(clock)),
      metrics_(metrics) {}

const NamespaceOptions* ShardManager::Find(std::string_view ns) const {
  for (const auto& n : options_.namespaces) {
    if (n.spec.ns == ns) return &n;
  }
  return nullptr;
}

void ShardManager::Start() {
  // A rebalance request wakes the loop at once (the leader applies it).
  auto watch = store_->Watch("shards/", [this](const std::vector<coord::WatchEvent>& events) {
    for (const auto& event : events) {
      if (event.type == coord::WatchEvent::Type::kPut &&
          event.kv.key.find("/rebalance/") != std::string::npos) {
        Poke();
        return;
      }
    }
  });
  if (watch.ok()) requests_watch_ = std::move(*watch);
  std::lock_guard lock(loop_mu_);
  if (loop_.joinable()) return;
  stopping_ = false;
  // The loop waits on real time (a background poll; tests drive ReconcileNow
  // directly), so it does not occupy the shared clock's timer thread with
  // store I/O.
  loop_ = std::thread([this] {
    std::unique_lock lock(loop_mu_);
    while (!stopping_) {
      lock.unlock();
      ReconcileNow();
      lock.lock();
      loop_cv_.wait_for(lock, options_.reconcile_interval, [this] { return stopping_ || poked_; });
      poked_ = false;
    }
  });
}

void ShardManager::Stop() {
  {
    std::lock_guard lock(loop_mu_);
    stopping_ = true;
  }
  loop_cv_.notify_all();
  if (loop_.joinable()) loop_.join();
  requests_watch_.Reset();
}

void ShardManager::Poke() {
  {
    std::lock_guard lock(loop_mu_);
    poked_ = true;
  }
  loop_cv_.notify_all();
}

std::vector<std::string> ShardManager::ReconcileNow() {
  std::lock_guard lock(reconcile_mu_);
  std::vector<std::string> written;
  for (const auto& ns : options_.namespaces) {
    PublishOwnLoad(ns);
    CheckBudgets(ns);
    if (auto name = ReconcileNamespace(ns)) written.push_back(*name);
  }
  return written;
}

std::optional<std::string> ShardManager::ReconcileNamespace(const NamespaceOptions& ns) {
  if (!leadership_) return std::nullopt;
  auto held = leadership_->Held(ns.leader_scope);
  if (!held) return std::nullopt;
  std::vector<ShardNode> nodes;
  for (auto& member : members_()) {
    if (!ns.owner_role.empty() &&
        std::find(member.roles.begin(), member.roles.end(), ns.owner_role) == member.roles.end()) {
      continue;
    }
    nodes.push_back(std::move(member.node));
  }
  auto stored = ReadShardMap(*store_, ns.spec.ns);
  if (!stored.ok()) {
    core::LogWarn("shards.map.read_failed",
                  {{"namespace", ns.spec.ns}, {"error", std::string(stored.status().message())}});
    return std::nullopt;
  }
  std::optional<ShardMap> next;
  if (!*stored || !(*stored)->map.SameInputs(ns.spec, nodes)) {
    auto computed = ComputeShardMap(ns.spec, std::move(nodes));
    if (!computed.ok()) {
      core::LogWarn(
          "shards.map.compute_failed",
          {{"namespace", ns.spec.ns}, {"error", std::string(computed.status().message())}});
      return std::nullopt;
    }
    // Earlier rebalances survive a membership change while their target is
    // still a replica of the shard (and not its natural owner already).
    if (*stored) {
      computed->last_rebalance = (*stored)->map.last_rebalance;
      for (const auto& move : (*stored)->map.moves) {
        if (move.shard < computed->shard_count() && computed->Owner(move.shard).id != move.to) {
          (void)computed->Move(move.shard, move.to, move.reason, move.at);
        }
      }
    }
    next = std::move(*computed);
  }
  if (!next && !*stored) return std::nullopt;
  ShardMap candidate = next ? std::move(*next) : (*stored)->map;
  decided_.clear();
  auto applied = ApplyRebalances(ns, candidate);
  const std::int64_t next_version = *stored ? (*stored)->map.version + 1 : 1;
  for (auto& decision : decided_) decision.version = next_version;
  if (!decided_.empty()) candidate.last_rebalance = decided_.back().ToJson();
  const bool moved = std::any_of(applied.begin(), applied.end(),
                                 [](const auto& a) { return a.second.rfind("moved", 0) == 0; });
  // Marks the requests handled (fenced too: a deposed leader cannot mark a
  // request it did not apply).
  auto mark_done = [&](std::int64_t version) {
    for (const auto& [kv, outcome] : applied) {
      auto request = nlohmann::json::parse(kv.value, nullptr, false);
      if (!request.is_object()) request = nlohmann::json::object();
      request["done"] = true;
      request["outcome"] = outcome;
      request["version"] = version;
      (void)store_->FencedPut(*held, kv.key, request.dump(), kv.mod_revision);
    }
  };
  if (!next && !moved) {
    mark_done((*stored)->map.version);
    holder_->Offer(std::make_shared<const ShardMap>((*stored)->map));
    return std::nullopt;
  }
  auto published = PublishShardMap(*store_, *held, std::move(candidate), *stored, metrics_);
  if (!published.ok()) return std::nullopt;
  mark_done(published->version);
  for (const auto& decision : decided_) {
    if (options_.on_rebalance) options_.on_rebalance(decision);
  }
  // The leader routes by its own map at once; the watch delivers it again
  // (ignored: same version).
  holder_->Offer(std::make_shared<const ShardMap>(std::move(*published)));
  return ns.spec.ns;
}

std::vector<std::pair<coord::KeyValue, std::string>> ShardManager::ApplyRebalances(
    const NamespaceOptions& ns, ShardMap& map) {
  std::vector<std::pair<coord::KeyValue, std::string>> handled;
  auto listed = store_->List("shards/" + ns.spec.ns + "/rebalance/");
  if (!listed.ok()) return handled;
  const auto now = clock_->Now();
  std::vector<int> owned(map.nodes.size(), 0);
  for (std::uint32_t s = 0; s < map.shard_count(); ++s) ++owned[map.OwnerIndex(s)];
  std::optional<std::map<std::string, NodeLoad>> loads;  // read once, on the first request
  for (const auto& kv : *listed) {
    auto request = nlohmann::json::parse(kv.value, nullptr, false);
    if (!request.is_object() || request.value("done", false)) continue;
    const std::int64_t shard = request.value("shard", std::int64_t{-1});
    std::string to = request.value("to", "");
    const std::string reason = request.value("reason", "manual");
    std::string outcome;
    if (shard < 0 || shard >= map.shard_count()) {
      outcome = "refused: shard out of range";
    } else if (map.width < 2) {
      outcome = "refused: the namespace has no replicas to move to";
    } else if (const ShardMove* last = map.MoveOf(static_cast<std::uint32_t>(shard));
               reason == "over-budget" && last != nullptr &&
               core::ParseTimestamp(last->at).value_or(core::TimePoint{}) +
                       options_.rebalance_cooldown >
                   now) {
      outcome = "skipped: moved less than the cooldown ago";
    } else {
      const auto s = static_cast<std::uint32_t>(shard);
      auto placement = map.Placement(s);
      // The candidates: the shard's replicas in placement order, with the
      // load each last reported (fresh ones only).
      if (!loads) {
        auto read = ReadLoads(*store_, ns.spec.ns);
        loads = read.ok() ? std::move(*read) : std::map<std::string, NodeLoad>{};
      }
      RebalanceDecision decision{.ns = ns.spec.ns,
                                 .shard = s,
                                 .from = map.Owner(s).id,
                                 .reason = reason,
                                 .requested_by = request.value("requestedBy", ""),
                                 .requested_qps = request.value("qps", 0.0),
                                 .at = core::FormatTimestamp(now)};
      for (std::size_t r = 1; r < placement.size(); ++r) {
        RebalanceCandidate c{.node = map.nodes[placement[r]].id,
                             .shards_owned = owned[placement[r]]};
        if (auto it = loads->find(c.node); it != loads->end()) {
          const auto at = core::ParseTimestamp(it->second.at);
          c.load_at = it->second.at;
          c.load_known = at.has_value() && now - *at <= kLoadStaleAfter;
          c.pending = it->second.pending;
          c.qps = it->second.qps;
        }
        decision.candidates.push_back(std::move(c));
      }
      if (to.empty()) {
        to = decision.candidates[ChooseFewestPending(decision.candidates, &decision.chooser)].node;
      } else {
        decision.chooser = "named";
      }
      decision.to = to;
      const std::uint32_t from_index = placement[0];
      auto moved = map.Move(s, to, reason, core::FormatTimestamp(now));
      if (moved.ok()) {
        core::LogInfo("shards.rebalance.decided", decision.ToJson());
        decided_.push_back(std::move(decision));
        --owned[from_index];
        ++owned[*map.IndexOf(to)];
        outcome = "moved to " + to;
        if (metrics_ != nullptr) {
          metrics_->GetCounter(kRebalancesMetric, {{"namespace", ns.spec.ns}, {"reason", reason}})
              .Add();
        }
        core::LogInfo("shards.rebalance.applied", {{"namespace", ns.spec.ns},
                                                   {"shard", s},
                                                   {"from", map.nodes[from_index].id},
                                                   {"to", to},
                                                   {"reason", reason},
                                                   {"qps", request.value("qps", 0.0)}});
      } else {
        outcome = "refused: " + std::string(moved.message());
      }
    }
    if (outcome.rfind("moved", 0) != 0) {
      core::LogWarn("shards.rebalance.not_applied",
                    {{"namespace", ns.spec.ns}, {"shard", shard}, {"outcome", outcome}});
    }
    handled.emplace_back(kv, outcome);
  }
  return handled;
}

void ShardManager::PublishOwnLoad(const NamespaceOptions& ns) {
  if (!options_.pending) return;
  NodeLoad load{.node = options_.node_id, .pending = options_.pending()};
  const auto now = clock_->Now();
  load.at = core::FormatTimestamp(now);
  const auto map = holder_->Get(ns.spec.ns);
  const ShardMeter* meter = router_ ? router_->meter(ns.spec.ns) : nullptr;
  if (map && meter != nullptr) {
    if (const auto self = map->IndexOf(options_.node_id)) {
      for (std::uint32_t s = 0; s < map->shard_count(); ++s) {
        if (map->OwnerIndex(s) != *self) continue;
        const double qps = meter->Qps(s, now);
        if (qps <= 0) continue;
        load.shard_qps[s] = qps;
        load.qps += qps;
      }
    }
  }
  if (auto s = PublishLoad(*store_, ns.spec.ns, load); !s.ok()) {
    core::Log(core::LogLevel::kDebug, "shards.load.publish_failed",
              {{"namespace", ns.spec.ns}, {"error", std::string(s.message())}});
  }
}

void ShardManager::CheckBudgets(const NamespaceOptions& ns) {
  if (!router_) return;
  // The runtime override (SetShardBudget) over the configured budget; applied
  // to the router so the backpressure sampler and the owner's admission read
  // it too. A failed read keeps the budgets applied last.
  if (auto override_read = ReadBudget(*store_, ns.spec.ns); override_read.ok()) {
    router_->ApplyBudgets(ns.spec.ns, *override_read);
  }
  const auto map = holder_->Get(ns.spec.ns);
  const ShardMeter* meter = router_->meter(ns.spec.ns);
  if (!map || map->width < 2 || meter == nullptr) return;
  const auto self = map->IndexOf(options_.node_id);
  if (!self) return;
  const auto now = clock_->Now();
  for (std::uint32_t s = 0; s < map->shard_count(); ++s) {
    if (map->OwnerIndex(s) != *self) continue;
    const double budget = meter->Budget(s);  // effective: override, else configured
    if (budget <= 0) continue;
    const double qps = meter->Qps(s, now);
    if (qps <= budget) continue;
    if (const ShardMove* last = map->MoveOf(s);
        last != nullptr &&
        core::ParseTimestamp(last->at).value_or(core::TimePoint{}) + options_.rebalance_cooldown >
            now) {
      continue;
    }
    // ABORTED while one is pending: the leader has not applied it yet.
    (void)RequestRebalance(*store_, ns.spec.ns, s, "", "over-budget", options_.node_id, qps);
  }
}

}  // namespace omnirelay::shards

namespace omnirelay::shards {

void AddRebalanceView(nlohmann::json& document, coord::LeadershipStore& store,
                      const std::vector<NamespaceOptions>& namespaces, const ShardMapHolder& holder,
                      core::TimePoint now) {
  if (!document.contains("namespaces")) return;
  for (auto& entry : document["namespaces"]) {
    const std::string ns = entry.value("namespace", "");
    const auto options = std::find_if(namespaces.begin(), namespaces.end(),
                                      [&](const NamespaceOptions& n) { return n.spec.ns == ns; });
    if (options == namespaces.end()) continue;
    const auto map = holder.Get(ns);
    entry["lastRebalance"] = map ? map->last_rebalance : nlohmann::json(nullptr);
    nlohmann::json loads = nlohmann::json::array();
    if (auto read = ReadLoads(store, ns); read.ok()) {
      for (const auto& [node, load] : *read) {
        auto json = load.ToJson();
        const auto at = core::ParseTimestamp(load.at);
        // Clamped: the report may be newer than `now` (taken before the read).
        json["ageMs"] =
            at ? std::max<std::int64_t>(
                     0, std::chrono::duration_cast<std::chrono::milliseconds>(now - *at).count())
               : -1;
        json["fresh"] = at.has_value() && now - *at <= kLoadStaleAfter;
        loads.push_back(std::move(json));
      }
    }
    entry["loads"] = std::move(loads);
    auto budget = ReadBudget(store, ns);
    if (!budget.ok()) continue;
    entry["budget"] = budget->ToJson();
    if (!budget->ns_qps && budget->shard_qps.empty()) continue;
    entry["budgetQps"] = budget->ns_qps.value_or(options->budget_qps);
    if (!entry.contains("shards") || !entry["shards"].is_array()) continue;
    for (auto& shard : entry["shards"]) {
      const auto id = shard.value("id", std::uint32_t{0});
      const double limit = budget->For(id, options->budget_qps);
      shard["budgetQps"] = limit;
      shard["overBudget"] = limit > 0 && shard.value("qps", 0.0) > limit;
    }
  }
}

}  // namespace omnirelay::shards
