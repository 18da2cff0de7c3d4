#include "omnirelay/shards/map_store.h"

#include <algorithm>

#include "omnirelay/core/logging.h"
#include "omnirelay/core/request_meta.h"
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

std::string MapKey(std::string_view ns) { return "shards/" + std::string(ns) + "/map"; }

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
  std::shared_ptr<const ShardMap> replaced;  // released outside the lock
  {
    std::lock_guard lock(mu_);
    auto& slot = maps_[map->spec.ns];
    if (slot && slot->version >= map->version) return false;
    replaced = std::move(slot);
    slot = map;
    listeners = listeners_;
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
  return true;
}

void ShardMapHolder::AddListener(Listener listener) {
  std::lock_guard lock(mu_);
  listeners_.push_back(std::move(listener));
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
  if (*stored && (*stored)->map.SameInputs(ns.spec, nodes)) {
    holder_->Offer(std::make_shared<const ShardMap>((*stored)->map));
    return std::nullopt;
  }
  auto computed = ComputeShardMap(ns.spec, std::move(nodes));
  if (!computed.ok()) {
    core::LogWarn("shards.map.compute_failed",
                  {{"namespace", ns.spec.ns}, {"error", std::string(computed.status().message())}});
    return std::nullopt;
  }
  auto published = PublishShardMap(*store_, *held, std::move(*computed), *stored, metrics_);
  if (!published.ok()) return std::nullopt;
  // The leader routes by its own map at once; the watch delivers it again
  // (ignored: same version).
  holder_->Offer(std::make_shared<const ShardMap>(std::move(*published)));
  return ns.spec.ns;
}

}  // namespace omnirelay::shards
