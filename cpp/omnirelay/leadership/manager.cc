#include "omnirelay/leadership/manager.h"

#include <thread>

#include "omnirelay/core/logging.h"

namespace omnirelay::leadership {

using core::MakeStatus;
using core::StatusCode;

const core::MetricDescriptor kLeadershipChangesMetric{
    "omnirelay.leadership.changes", core::MetricKind::kCounter, "{change}",
    "Leader changes observed per scope (a new leader, or the scope becoming leaderless)"};
const core::MetricDescriptor kLeadershipTermMetric{
    "omnirelay.leadership.term", core::MetricKind::kGauge, "1",
    "Fencing token (term) of the current leader of the scope as last observed; only grows"};
const core::MetricDescriptor kLeadershipIsLeaderMetric{"omnirelay.leadership.is_leader",
                                                       core::MetricKind::kGauge, "1",
                                                       "1 while this node leads the scope"};
const core::MetricDescriptor kLeaseRenewDurationMetric{
    "omnirelay.leadership.lease_renew.duration", core::MetricKind::kHistogram, "ms",
    "Latency of one lease keep-alive round trip to the coordination store"};
const core::MetricDescriptor kLeaseRenewFailuresMetric{
    "omnirelay.leadership.lease_renew.failures", core::MetricKind::kCounter, "{renewal}",
    "Lease keep-alives that failed (store unreachable or lease gone)"};

namespace {
constexpr char kPromotePrefix[] = "promote/";

std::int64_t WallMs(core::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}
}  // namespace

LeadershipOptions LeadershipOptions::Fast() {
  LeadershipOptions options;
  options.lease_ttl = std::chrono::seconds(2);
  options.bootstrap_step = std::chrono::seconds(1);
  options.failover_step = std::chrono::milliseconds(200);
  return options;
}

struct LeadershipManager::Scope {
  std::string name;
  bool candidate = false;
  int priority = 0;
  std::optional<coord::Leadership> observed;
  bool ever_led = false;  // had a leader since this node started
  std::optional<coord::Leadership> held;
  std::uint64_t epoch = 0;  // invalidates scheduled campaign attempts
  std::string promote_target;
  core::TimePoint promote_deadline{};
  // The target was seen leading since the marker was set: the hand-over is
  // done and the hold-off ends (a later loss is a normal failover).
  bool promote_target_seen = false;
};

std::shared_ptr<LeadershipManager> LeadershipManager::Create(
    LeadershipOptions options, std::shared_ptr<coord::LeadershipStore> store,
    std::shared_ptr<core::Clock> clock, core::MetricsRegistry* metrics) {
  return std::shared_ptr<LeadershipManager>(
      new LeadershipManager(std::move(options), std::move(store), std::move(clock), metrics));
}

LeadershipManager::LeadershipManager(LeadershipOptions options,
                                     std::shared_ptr<coord::LeadershipStore> store,
                                     std::shared_ptr<core::Clock> clock,
                                     core::MetricsRegistry* metrics)
    : options_(std::move(options)),
      store_(std::move(store)),
      clock_(clock ? std::move(clock) : core::SystemClock::Shared()),
      metrics_(metrics) {
  if (options_.directory) directory_ = options_.directory;
  if (options_.renew_interval <= core::Duration::zero()) {
    options_.renew_interval = options_.lease_ttl / 3;
  }
  if (metrics_ != nullptr) {
    renew_latency_ = &metrics_->GetHistogram(kLeaseRenewDurationMetric);
    renew_failures_ = &metrics_->GetCounter(kLeaseRenewFailuresMetric);
  }
}

LeadershipManager::~LeadershipManager() { Stop(); }

LeadershipManager::Scope& LeadershipManager::ScopeFor(const std::string& name) {
  auto& slot = scopes_[name];
  if (!slot) {
    slot = std::make_unique<Scope>();
    slot->name = name;
  }
  return *slot;
}

core::Status LeadershipManager::Start() {
  if (options_.node_id.empty()) {
    return MakeStatus(StatusCode::kInvalidArgument, "leadership: node id is empty");
  }
  std::vector<std::string> observed = {"global"};
  for (const auto& candidacy : options_.candidacies) {
    if (auto status = coord::LeadershipStore::ValidateScope(candidacy.scope); !status.ok()) {
      return status;
    }
    if (candidacy.priority < 0) {
      return MakeStatus(StatusCode::kInvalidArgument,
                        "leadership: priority of " + candidacy.scope + " must be >= 0");
    }
    observed.push_back(candidacy.scope);
  }
  for (const auto& scope : options_.observed_scopes) {
    if (auto status = coord::LeadershipStore::ValidateScope(scope); !status.ok()) return status;
    observed.push_back(scope);
  }
  Post([this, observed] {
    for (const auto& candidacy : options_.candidacies) {
      auto& scope = ScopeFor(candidacy.scope);
      scope.candidate = true;
      scope.priority = candidacy.priority;
    }
    for (const auto& name : observed) ScopeFor(name);
    EnsureLease();
    std::weak_ptr<LeadershipManager> weak = weak_from_this();
    auto markers =
        store_->Watch(kPromotePrefix, [weak](const std::vector<coord::WatchEvent>& events) {
          auto self = weak.lock();
          if (!self) return;
          for (const auto& event : events) {
            if (event.type != coord::WatchEvent::Type::kPut) continue;
            const std::string scope = event.kv.key.substr(sizeof(kPromotePrefix) - 1);
            self->Post([self = self.get(), scope, value = event.kv.value] {
              self->OnPromoteMarker(scope, value);
            });
          }
        });
    if (markers.ok()) watches_.push_back(*std::move(markers));
    for (const auto& [name, scope] : scopes_) {
      auto watch = store_->Observe(name, [weak, name = name](const auto& leader) {
        if (auto self = weak.lock()) {
          self->Post([self = self.get(), name, leader] { self->OnLeader(name, leader); });
        }
      });
      if (watch.ok()) {
        watches_.push_back(*std::move(watch));
      } else {
        core::LogWarn("leadership.observe_failed",
                      {{"scope", name}, {"error", std::string(watch.status().message())}});
      }
    }
    Schedule(clock_->Now() + options_.renew_interval, [this] { Renew(); });
  });
  return core::Status();
}

void LeadershipManager::Stop() { Halt(true); }
void LeadershipManager::Freeze() { Halt(false); }

void LeadershipManager::Halt(bool graceful) {
  std::vector<core::TimerId> timers;
  {
    std::lock_guard lock(queue_mu_);
    if (stopped_) return;
    stopped_ = true;
    queue_.clear();
  }
  {
    std::lock_guard lock(timers_mu_);
    timers.assign(timers_.begin(), timers_.end());
    timers_.clear();
  }
  for (auto id : timers) clock_->Cancel(id);
  // Wait out a drain running on another thread; new posts are ignored now.
  while (true) {
    {
      std::lock_guard lock(queue_mu_);
      if (!draining_) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  watches_.clear();
  for (auto& [name, scope] : scopes_) {
    if (scope->held && graceful) store_->Resign(*scope->held).IgnoreError();
    scope->held.reset();
  }
  if (lease_ && graceful) store_->RevokeLease(lease_->id).IgnoreError();
  lease_.reset();
  std::lock_guard lock(view_mu_);
  held_.clear();
  ready_ = false;
  for (auto& state : view_) state.held = false;
}

void LeadershipManager::Post(std::function<void()> work) {
  std::unique_lock lock(queue_mu_);
  if (stopped_) return;
  queue_.push_back(std::move(work));
  if (draining_) return;  // the running drain picks it up
  draining_ = true;
  while (!queue_.empty() && !stopped_) {
    auto next = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    next();
    {
      std::lock_guard view_lock(view_mu_);
      PublishLocked();
    }
    lock.lock();
  }
  draining_ = false;
}

void LeadershipManager::Schedule(core::TimePoint when, std::function<void()> work) {
  std::weak_ptr<LeadershipManager> weak = weak_from_this();
  auto id = std::make_shared<core::TimerId>(0);
  std::lock_guard lock(timers_mu_);
  *id = clock_->ScheduleAt(when, [weak, id, work = std::move(work)] {
    auto self = weak.lock();
    if (!self) return;
    {
      std::lock_guard lock(self->timers_mu_);
      self->timers_.erase(*id);
    }
    self->Post(work);
  });
  timers_.insert(*id);
}

void LeadershipManager::EnsureLease() {
  if (lease_) return;
  auto granted = store_->GrantLease(options_.lease_ttl);
  if (!granted.ok()) {
    core::LogWarn("leadership.lease_grant_failed",
                  {{"node", options_.node_id}, {"error", std::string(granted.status().message())}});
    {
      std::lock_guard lock(view_mu_);
      ready_ = false;
    }
    return;  // the renew timer retries
  }
  lease_ = *granted;
  {
    std::lock_guard lock(view_mu_);
    ready_ = true;
  }
  Schedule(lease_->expires_at, [this] { LapseIfExpired(); });
  // Re-read every scope: the observe stream may have missed changes while
  // the store was unreachable.
  std::vector<std::string> names;
  for (const auto& [name, scope] : scopes_) names.push_back(name);
  for (const auto& name : names) {
    auto leader = store_->Leader(name);
    if (leader.ok()) {
      OnLeader(name, *leader);
    } else {
      Consider(name);
    }
  }
}

void LeadershipManager::Renew() {
  Schedule(clock_->Now() + options_.renew_interval, [this] { Renew(); });
  if (!lease_) {
    EnsureLease();
    return;
  }
  const auto started = std::chrono::steady_clock::now();
  auto renewed = store_->KeepAlive(lease_->id);
  if (renew_latency_ != nullptr) {
    renew_latency_->Record(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
            .count());
  }
  if (renewed.ok()) {
    lease_ = *renewed;
    std::lock_guard lock(view_mu_);
    ready_ = true;
    Schedule(lease_->expires_at, [this] { LapseIfExpired(); });
    return;
  }
  if (renew_failures_ != nullptr) renew_failures_->Add(1);
  if (renewed.status().code() == StatusCode::kNotFound) {
    // The store expired our lease: every leadership on it is gone.
    for (auto& [name, scope] : scopes_) {
      if (scope->held) DropHeld(name, "lease expired in the store");
    }
    lease_.reset();
    EnsureLease();
    return;
  }
  core::LogWarn("leadership.lease_renew_failed",
                {{"node", options_.node_id}, {"error", std::string(renewed.status().message())}});
  LapseIfExpired();
}

void LeadershipManager::LapseIfExpired() {
  if (!lease_ || clock_->Now() < lease_->expires_at) return;
  for (auto& [name, scope] : scopes_) {
    if (scope->held) DropHeld(name, "lease lapsed (store unreachable)");
  }
  std::lock_guard lock(view_mu_);
  ready_ = false;
}

void LeadershipManager::OnLeader(const std::string& name,
                                 const std::optional<coord::Leadership>& leader) {
  auto& scope = ScopeFor(name);
  if (scope.held && (!leader || leader->fencing_token < scope.held->fencing_token)) {
    // Events arrive asynchronously: one older than our own election (the
    // scope leaderless, or an earlier leader) must not unseat us. Ask the store.
    auto current = store_->Leader(name);
    if (current.ok() && current->has_value() && (*current)->key == scope.held->key) {
      RecordLeader(scope, *current);
      return;
    }
  }
  RecordLeader(scope, leader);
  if (scope.held && (!leader || leader->key != scope.held->key)) {
    DropHeld(name, "observed another leader");
  }
  if (!leader) Consider(name);
}

void LeadershipManager::RecordLeader(Scope& scope, const std::optional<coord::Leadership>& leader) {
  const std::int64_t before = scope.observed ? scope.observed->fencing_token : 0;
  const std::int64_t after = leader ? leader->fencing_token : 0;
  const std::string before_value = scope.observed ? scope.observed->value : "";
  scope.observed = leader;
  if (leader) scope.ever_led = true;
  if (leader && leader->value == scope.promote_target) scope.promote_target_seen = true;
  directory_->Set(scope.name, leader ? std::optional<LeaderInfo>(
                                           LeaderInfo{leader->value, leader->fencing_token})
                                     : std::nullopt);
  if (before == after && before_value == (leader ? leader->value : "")) return;
  if (before != after && metrics_ != nullptr) {
    metrics_->GetCounter(kLeadershipChangesMetric, {{"scope", scope.name}}).Add(1);
    if (leader) {
      metrics_->GetGauge(kLeadershipTermMetric, {{"scope", scope.name}})
          .Set(static_cast<double>(after));
    }
  }
  core::LogInfo("leadership.changed", {{"node", options_.node_id},
                                       {"scope", scope.name},
                                       {"leader", leader ? leader->value : ""},
                                       {"fencing_token", after}});
  if (options_.on_change) {
    options_.on_change(LeadershipChange{.scope = scope.name,
                                        .previous = before_value,
                                        .leader = leader ? leader->value : "",
                                        .previous_fencing_token = before,
                                        .fencing_token = after,
                                        .at = clock_->Now()});
  }
}

void LeadershipManager::OnPromoteMarker(const std::string& name, const std::string& value) {
  const auto bar = value.find('|');
  if (bar == std::string::npos) return;
  auto& scope = ScopeFor(name);
  scope.promote_target = value.substr(0, bar);
  scope.promote_target_seen =
      scope.observed.has_value() && scope.observed->value == scope.promote_target;
  scope.promote_deadline =
      core::TimePoint(std::chrono::milliseconds(std::atoll(value.c_str() + bar + 1)));
  if (clock_->Now() >= scope.promote_deadline) return;
  core::LogInfo("leadership.promote",
                {{"node", options_.node_id}, {"scope", name}, {"target", scope.promote_target}});
  if (scope.held && scope.promote_target != options_.node_id) {
    // Hand over: resigning kills our token in the store, so any write we
    // still attempt with it is fenced.
    store_->Resign(*scope.held).IgnoreError();
    DropHeld(name, "promoted " + scope.promote_target);
  }
  ++scope.epoch;
  Consider(name);
  // When the marker runs out, the normal candidates may step in again.
  Schedule(scope.promote_deadline, [this, name] { Consider(name); });
}

int LeadershipManager::EffectivePriority(const Scope& scope) const {
  int priority = scope.candidate ? scope.priority : -1;
  if (scope.name == "global" && options_.promote_regional_to_global) {
    for (const auto& [name, other] : scopes_) {
      if (other->held && name.starts_with("region/")) {
        if (priority < 0 || options_.promotion_priority < priority) {
          priority = options_.promotion_priority;
        }
      }
    }
  }
  return priority;
}

void LeadershipManager::Consider(const std::string& name) {
  auto& scope = ScopeFor(name);
  if (!lease_ || scope.held || scope.observed) return;
  const bool promotion_active =
      clock_->Now() < scope.promote_deadline && !scope.promote_target_seen;
  core::Duration delay{};
  if (promotion_active) {
    if (scope.promote_target != options_.node_id) return;  // hold off for the target
  } else {
    const int priority = EffectivePriority(scope);
    if (priority < 0) return;
    delay = priority * (scope.ever_led ? options_.failover_step : options_.bootstrap_step);
  }
  const std::uint64_t epoch = ++scope.epoch;
  if (delay == core::Duration::zero()) {
    TryWin(name, epoch);
  } else {
    Schedule(clock_->Now() + delay, [this, name, epoch] { TryWin(name, epoch); });
  }
}

void LeadershipManager::TryWin(const std::string& name, std::uint64_t epoch) {
  auto& scope = ScopeFor(name);
  if (scope.epoch != epoch || scope.held || !lease_ || scope.observed) return;
  if (clock_->Now() >= lease_->expires_at) return;  // never campaign on a lapsed lease
  auto won = store_->TryCampaign(name, lease_->id, options_.node_id);
  if (!won.ok()) {
    core::LogWarn("leadership.campaign_failed",
                  {{"scope", name}, {"error", std::string(won.status().message())}});
    const std::uint64_t retry = ++scope.epoch;
    Schedule(clock_->Now() + options_.failover_step, [this, name, retry] { TryWin(name, retry); });
    return;
  }
  if (!won->has_value()) return;  // someone else leads; the observe stream will say who
  scope.held = **won;
  RecordLeader(scope, scope.held);
  if (scope.promote_target == options_.node_id && clock_->Now() < scope.promote_deadline) {
    // Promotion done: end the other candidates' hold-off now, so that if we
    // fail right away the normal failover (not the marker's deadline) applies.
    const std::string key = std::string(kPromotePrefix) + name;
    auto marker = store_->Get(key);
    if (marker.ok() && marker->has_value()) {
      store_->CompareAndSwap(key, options_.node_id + "|0", (*marker)->mod_revision).IgnoreError();
    }
    scope.promote_deadline = core::TimePoint{};
  }
  core::LogInfo(
      "leadership.acquired",
      {{"node", options_.node_id}, {"scope", name}, {"fencing_token", scope.held->fencing_token}});
  // Leading a region makes this node a candidate for global.
  if (name.starts_with("region/")) Consider("global");
}

void LeadershipManager::DropHeld(const std::string& name, std::string_view why) {
  auto& scope = ScopeFor(name);
  if (!scope.held) return;
  core::LogInfo("leadership.lost", {{"node", options_.node_id},
                                    {"scope", name},
                                    {"fencing_token", scope.held->fencing_token},
                                    {"reason", std::string(why)}});
  scope.held.reset();
  ++scope.epoch;
}

void LeadershipManager::PublishLocked() {
  view_.clear();
  held_.clear();
  for (const auto& [name, scope] : scopes_) {
    ScopeState state;
    state.scope = name;
    if (scope->observed) {
      state.leader = LeaderInfo{scope->observed->value, scope->observed->fencing_token};
      state.fencing_token = scope->observed->fencing_token;
    }
    state.priority = EffectivePriority(*scope);
    state.candidate = state.priority >= 0;
    state.held = scope->held.has_value();
    if (scope->held) {
      held_[name] = *scope->held;
      state.fencing_token = scope->held->fencing_token;
      if (lease_) state.lease_expires_at = lease_->expires_at;
    }
    if (metrics_ != nullptr) {
      metrics_->GetGauge(kLeadershipIsLeaderMetric, {{"scope", name}}).Set(state.held ? 1 : 0);
    }
    view_.push_back(std::move(state));
  }
}

std::vector<ScopeState> LeadershipManager::Scopes() const {
  std::lock_guard lock(view_mu_);
  return view_;
}

std::optional<coord::Leadership> LeadershipManager::Held(std::string_view scope) const {
  std::lock_guard lock(view_mu_);
  auto it = held_.find(scope);
  if (it == held_.end()) return std::nullopt;
  return it->second;
}

bool LeadershipManager::ready_for_leader_work() const {
  std::lock_guard lock(view_mu_);
  return ready_;
}

core::Status LeadershipManager::Promote(std::string_view scope, std::string_view node) {
  if (auto status = coord::LeadershipStore::ValidateScope(scope); !status.ok()) return status;
  if (node.empty()) return MakeStatus(StatusCode::kInvalidArgument, "promote: node is empty");
  const std::string key = std::string(kPromotePrefix) + std::string(scope);
  const std::string value =
      std::string(node) + "|" + std::to_string(WallMs(clock_->Now() + 2 * options_.lease_ttl));
  for (int attempt = 0; attempt < 5; ++attempt) {
    auto current = store_->Get(key);
    if (!current.ok()) return current.status();
    const coord::Revision expected = current->has_value() ? (*current)->mod_revision : 0;
    auto written = store_->CompareAndSwap(key, value, expected);
    if (written.ok()) return core::Status();
    if (written.status().code() != StatusCode::kFailedPrecondition) return written.status();
  }
  return MakeStatus(StatusCode::kAborted,
                    "promote: concurrent promotions of " + std::string(scope) + ", try again");
}

core::StatusOr<coord::Revision> LeadershipManager::FencedPut(std::string_view scope,
                                                             std::string_view key,
                                                             std::string_view value) {
  auto held = Held(scope);
  if (!held) {
    return MakeStatus(
        StatusCode::kFailedPrecondition,
        "not the leader of " + std::string(scope) + " (node " + options_.node_id + ")",
        "not-leader");
  }
  return store_->FencedPut(*held, key, value);
}

}  // namespace omnirelay::leadership
