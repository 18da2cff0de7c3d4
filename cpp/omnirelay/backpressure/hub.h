#pragma once
// BackpressureHub: one node's view of backpressure (docs/backpressure.md).
//
// Local sources (a ResourceLease queue over its high watermark, a level fed
// through a WatermarkStateMachine) make the node "under backpressure"; the
// node publishes that in its gossip metadata (label kGossipLabel) and every
// other node feeds what it sees per member into SetRemote. `throttling()` is
// true while the node itself or any member is under backpressure: the node
// then switches its rate limiter to the backpressure profile.
//
// Change listeners run under the hub's mutex, in transition order (so the
// last applied state is the current one); they must not call back into the
// hub. Lock order: a queue's lock -> hub -> membership. Thread-safe.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "omnirelay/backpressure/watermark.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"

namespace omnirelay::backpressure {

// The gossip metadata label a node sets while under backpressure ("on").
inline constexpr char kGossipLabel[] = "omnirelay.backpressure";
// The response header a node under backpressure adds to its answers.
inline constexpr char kResponseHeader[] = "rpc-backpressure";

namespace metric {
inline const core::MetricDescriptor kTransitions{
    "omnirelay.backpressure.transitions", core::MetricKind::kCounter, "1",
    "Backpressure state changes (on and off) per source or member"};
inline const core::MetricDescriptor kActive{
    "omnirelay.backpressure.active", core::MetricKind::kGauge, "1",
    "1 while the source (local) or member (remote) is under backpressure"};
inline const core::MetricDescriptor kThrottling{
    "omnirelay.backpressure.throttling", core::MetricKind::kGauge, "1",
    "1 while this node's rate limiter runs its backpressure profile"};
inline const core::MetricDescriptor kThrottled{
    "omnirelay.backpressure.throttled", core::MetricKind::kCounter, "{call}",
    "Calls answered RESOURCE_EXHAUSTED while the node was throttling"};
}  // namespace metric

struct HubState {
  bool local = false;       // this node is under backpressure
  bool remote = false;      // some other member is under backpressure
  bool throttling = false;  // local or remote
};

class BackpressureHub {
 public:
  using ChangeListener = std::function<void(const HubState&)>;

  BackpressureHub(std::string node_id, std::shared_ptr<core::Clock> clock,
                  std::shared_ptr<core::MetricsRegistry> metrics, size_t history = 1024);

  void AddListener(ChangeListener listener);

  // A source that does its own hysteresis (a ResourceLease queue).
  void SetSource(const std::string& source, bool active, nlohmann::json detail = {});
  // A level source with its own watermarks; UpdateLevel feeds it.
  void AddLevelSource(const std::string& source, WatermarkOptions options);
  // Returns whether the source is under backpressure after this level.
  bool UpdateLevel(const std::string& source, double level);
  // New watermarks for a level source, keeping its state (no-op if unknown).
  void SetLevelWatermarks(const std::string& source, WatermarkOptions options);
  // What gossip says about another member (removed members: Forget).
  void SetRemote(const std::string& member, bool active);
  void Forget(const std::string& member);

  bool local() const { return local_.load(std::memory_order_relaxed); }
  bool remote() const { return remote_.load(std::memory_order_relaxed); }
  bool throttling() const { return throttling_.load(std::memory_order_relaxed); }
  const std::string& node_id() const { return node_id_; }
  void CountThrottled();

  // {"node","local","throttling","sources":{..},"members":{id:{"active",..}}}
  nlohmann::json ToJson() const;
  // The next transition after `cursor`, waiting up to `timeout`; nullopt on
  // timeout or once closed. Advances `cursor`.
  std::optional<nlohmann::json> Next(std::uint64_t& cursor, core::Duration timeout);
  std::uint64_t Cursor() const;
  void Close();
  bool closed() const;

 private:
  struct Source {
    bool active = false;
    std::optional<WatermarkStateMachine> machine;
    nlohmann::json detail;
    core::TimePoint since{};
    std::uint64_t transitions = 0;
  };
  struct Remote {
    bool active = false;
    core::TimePoint since{};
    std::uint64_t transitions = 0;
  };
  // With mu_ held.
  void SourceChangedLocked(const std::string& name, Source& source);
  void RecomputeLocked(const std::string& scope, const std::string& name, bool active);

  const std::string node_id_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<core::MetricsRegistry> metrics_;
  const size_t history_;
  std::atomic<bool> local_{false};
  std::atomic<bool> remote_{false};
  std::atomic<bool> throttling_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Source> sources_;
  std::map<std::string, Remote> remotes_;
  std::vector<ChangeListener> listeners_;
  std::deque<std::pair<std::uint64_t, nlohmann::json>> ring_;
  std::uint64_t sequence_ = 0;
  bool closed_ = false;
};

}  // namespace omnirelay::backpressure
