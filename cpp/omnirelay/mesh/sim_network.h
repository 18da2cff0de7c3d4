#pragma once
// A simulated network for membership: messages between registered nodes are
// delivered through a Clock after a per-link latency, may be lost, and links
// may be cut (partitions) or nodes stopped (crash: messages to and from them
// vanish). Every random choice comes from one seeded generator, so a run is
// reproducible from its seed when driven by a deterministic clock (SimClock,
// or core::ManualClock in unit tests).
//
// Threading: single-threaded by design (the simulator and the tests drive
// everything from one thread); not thread-safe.
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/mesh/transport.h"

namespace omnirelay::mesh {

class Membership;

// A Clock for simulation: Now() is the time of the event being run, timers
// run in (time, insertion) order, cancellation is O(1) (lazy). Single-threaded.
class SimClock final : public core::Clock {
 public:
  explicit SimClock(core::TimePoint start = core::TimePoint{} + std::chrono::hours(24 * 365 * 50))
      : now_(start) {}
  core::TimePoint Now() const override { return now_; }
  core::TimerId ScheduleAt(core::TimePoint when, std::function<void()> callback) override;
  bool Cancel(core::TimerId id) override;
  // Runs every event due up to `until`, then sets Now() to `until`.
  void RunUntil(core::TimePoint until);
  void RunFor(core::Duration d) { RunUntil(now_ + d); }
  std::uint64_t events_run() const { return events_run_; }
  std::size_t pending() const { return live_.size(); }

 private:
  struct Event {
    core::TimePoint when;
    core::TimerId id;
    bool operator>(const Event& o) const { return when != o.when ? when > o.when : id > o.id; }
  };
  core::TimePoint now_;
  core::TimerId next_id_ = 1;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> heap_;
  std::unordered_map<core::TimerId, std::function<void()>> live_;
  std::uint64_t events_run_ = 0;
};

struct SimNetworkOptions {
  core::Duration min_latency = std::chrono::microseconds(500);
  core::Duration max_latency = std::chrono::milliseconds(2);  // per link, fixed for the run
  double loss = 0.0;                                          // uniform per message
  std::uint64_t seed = 1;
};

class SimNetwork : public std::enable_shared_from_this<SimNetwork> {
 public:
  SimNetwork(std::shared_ptr<core::Clock> clock, SimNetworkOptions options);

  // The transport a node at `address` sends through.
  std::shared_ptr<Transport> Endpoint(const std::string& address);
  // Where messages to `address` are delivered.
  void Attach(const std::string& address, std::weak_ptr<Membership> node);
  // A crashed node: nothing reaches it and nothing it sends leaves.
  void SetDown(const std::string& address, bool down);
  // Cuts (or restores) traffic between two groups of addresses, both ways.
  void Partition(const std::vector<std::string>& a, const std::vector<std::string>& b);
  void Heal();
  void SetLoss(double loss) { options_.loss = loss; }

  std::uint64_t delivered() const { return delivered_; }
  std::uint64_t dropped() const { return dropped_; }

 private:
  class Link;
  void Deliver(const std::string& from, const std::string& to, MessagePtr message);
  core::Duration Latency(const std::string& from, const std::string& to) const;

  std::shared_ptr<core::Clock> clock_;
  SimNetworkOptions options_;
  std::mt19937_64 rng_;
  std::unordered_map<std::string, std::weak_ptr<Membership>> nodes_;
  std::unordered_set<std::string> down_;
  std::unordered_map<std::string, int> side_;  // partition side per address (0 = none)
  std::uint64_t delivered_ = 0;
  std::uint64_t dropped_ = 0;
};

}  // namespace omnirelay::mesh
