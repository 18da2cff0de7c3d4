#include "omnirelay/backpressure/hub.h"

#include <chrono>

namespace omnirelay::backpressure {

namespace {
std::int64_t UnixMs(core::TimePoint at) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count();
}
}  // namespace

BackpressureHub::BackpressureHub(std::string node_id, std::shared_ptr<core::Clock> clock,
                                 std::shared_ptr<core::MetricsRegistry> metrics, size_t history)
    : node_id_(std::move(node_id)),
      clock_(std::move(clock)),
      metrics_(std::move(metrics)),
      history_(history) {
  metrics_->GetGauge(metric::kThrottling, {}).Set(0);
}

void BackpressureHub::AddListener(ChangeListener listener) {
  std::lock_guard lock(mu_);
  listeners_.push_back(std::move(listener));
}

void BackpressureHub::SetSource(const std::string& name, bool active, nlohmann::json detail) {
  std::lock_guard lock(mu_);
  auto [it, inserted] = sources_.try_emplace(name);
  auto& source = it->second;
  if (!detail.is_null()) source.detail = std::move(detail);
  if (inserted) {
    source.since = clock_->Now();
    metrics_
        ->GetGauge(metric::kActive,
                   {{"backpressure.scope", "local"}, {"backpressure.source", name}})
        .Set(0);
    if (!active) return;
  } else if (source.active == active) {
    return;
  }
  source.active = active;
  SourceChangedLocked(name, source);
}

void BackpressureHub::AddLevelSource(const std::string& name, WatermarkOptions options) {
  std::lock_guard lock(mu_);
  auto& source = sources_[name];
  source.machine.emplace(options);
  source.since = clock_->Now();
  source.detail = {{"highWatermark", options.high}, {"lowWatermark", options.low}};
}

void BackpressureHub::SetLevelWatermarks(const std::string& name, WatermarkOptions options) {
  std::lock_guard lock(mu_);
  auto it = sources_.find(name);
  if (it == sources_.end() || !it->second.machine) return;
  it->second.machine->SetOptions(options);
  it->second.detail["highWatermark"] = options.high;
  it->second.detail["lowWatermark"] = options.low;
}

bool BackpressureHub::UpdateLevel(const std::string& name, double level) {
  std::lock_guard lock(mu_);
  auto it = sources_.find(name);
  if (it == sources_.end() || !it->second.machine) return false;
  auto& source = it->second;
  source.detail["level"] = level;
  if (auto now_active = source.machine->Update(level, clock_->Now())) {
    source.active = *now_active;
    SourceChangedLocked(name, source);
  }
  return source.active;
}

void BackpressureHub::SourceChangedLocked(const std::string& name, Source& source) {
  source.since = clock_->Now();
  ++source.transitions;
  const core::Tags tags{{"backpressure.scope", "local"}, {"backpressure.source", name}};
  metrics_->GetCounter(metric::kTransitions, tags).Add();
  metrics_->GetGauge(metric::kActive, tags).Set(source.active ? 1 : 0);
  RecomputeLocked("local", name, source.active);
}

void BackpressureHub::SetRemote(const std::string& member, bool active) {
  if (member == node_id_) return;
  std::lock_guard lock(mu_);
  auto [it, inserted] = remotes_.try_emplace(member);
  auto& remote = it->second;
  if (!inserted && remote.active == active) return;
  if (inserted && !active) {
    remote.since = clock_->Now();
    return;
  }
  remote.active = active;
  remote.since = clock_->Now();
  ++remote.transitions;
  const core::Tags tags{{"backpressure.scope", "remote"}, {"backpressure.member", member}};
  metrics_->GetCounter(metric::kTransitions, tags).Add();
  metrics_->GetGauge(metric::kActive, tags).Set(active ? 1 : 0);
  RecomputeLocked("member", member, active);
}

void BackpressureHub::Forget(const std::string& member) {
  std::lock_guard lock(mu_);
  auto it = remotes_.find(member);
  if (it == remotes_.end()) return;
  const bool was_active = it->second.active;
  remotes_.erase(it);
  if (was_active) {
    metrics_
        ->GetGauge(metric::kActive,
                   {{"backpressure.scope", "remote"}, {"backpressure.member", member}})
        .Set(0);
    RecomputeLocked("member", member, false);
  }
}

void BackpressureHub::RecomputeLocked(const std::string& scope, const std::string& name,
                                      bool active) {
  bool local = false;
  for (const auto& [n, s] : sources_) local = local || s.active;
  bool remote = false;
  for (const auto& [n, r] : remotes_) remote = remote || r.active;
  const bool throttling = local || remote;
  const HubState before{local_.load(), remote_.load(), throttling_.load()};
  local_.store(local);
  remote_.store(remote);
  throttling_.store(throttling);
  metrics_->GetGauge(metric::kThrottling, {}).Set(throttling ? 1 : 0);

  ring_.emplace_back(++sequence_, nlohmann::json{{"sequence", sequence_},
                                                 {"node", node_id_},
                                                 {"scope", scope},
                                                 {scope == "local" ? "source" : "member", name},
                                                 {"active", active},
                                                 {"local", local},
                                                 {"remote", remote},
                                                 {"throttling", throttling},
                                                 {"atUnixMs", UnixMs(clock_->Now())}});
  while (ring_.size() > history_) ring_.pop_front();
  cv_.notify_all();
  if (before.local != local || before.remote != remote) {
    for (const auto& listener : listeners_) listener(HubState{local, remote, throttling});
  }
}

void BackpressureHub::CountThrottled() { metrics_->GetCounter(metric::kThrottled, {}).Add(); }

nlohmann::json BackpressureHub::ToJson() const {
  std::lock_guard lock(mu_);
  nlohmann::json sources = nlohmann::json::object();
  for (const auto& [name, s] : sources_) {
    nlohmann::json entry = {
        {"active", s.active}, {"transitions", s.transitions}, {"sinceUnixMs", UnixMs(s.since)}};
    if (s.detail.is_object()) entry.update(s.detail);
    sources[name] = entry;
  }
  nlohmann::json members = nlohmann::json::object();
  members[node_id_] = {{"active", local_.load()}, {"self", true}};
  for (const auto& [id, r] : remotes_) {
    members[id] = {
        {"active", r.active}, {"transitions", r.transitions}, {"sinceUnixMs", UnixMs(r.since)}};
  }
  return {{"node", node_id_},         {"local", local_.load()},
          {"remote", remote_.load()}, {"throttling", throttling_.load()},
          {"sources", sources},       {"members", members},
          {"sequence", sequence_}};
}

std::optional<nlohmann::json> BackpressureHub::Next(std::uint64_t& cursor, core::Duration timeout) {
  std::unique_lock lock(mu_);
  const bool ready = cv_.wait_for(lock, timeout, [&] { return closed_ || sequence_ > cursor; });
  if (!ready || closed_) return std::nullopt;
  for (const auto& [seq, event] : ring_) {
    if (seq > cursor) {
      cursor = seq;
      return event;
    }
  }
  cursor = sequence_;
  return std::nullopt;
}

std::uint64_t BackpressureHub::Cursor() const {
  std::lock_guard lock(mu_);
  return sequence_;
}

void BackpressureHub::Close() {
  std::lock_guard lock(mu_);
  closed_ = true;
  cv_.notify_all();
}

bool BackpressureHub::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

}  // namespace omnirelay::backpressure
