#pragma once
// The deterministic membership simulator: hundreds to thousands of
// in-process Membership nodes on a SimClock over a SimNetwork (per-link
// latency, uniform loss, partitions, crashes), reproducible from its seed.
// The protocol code is the production code; only the clock and the transport
// are simulated. Used by the simulation tests (mesh_sim_test), the
// simulator benchmark (benchmarks/mesh_simulation.py via the bindings) and
// anyone who wants to try an Options change at scale before shipping it.
//
// Threading: single-threaded; not thread-safe.
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "omnirelay/mesh/membership.h"
#include "omnirelay/mesh/sim_network.h"

namespace omnirelay::mesh {

struct SimulatorOptions {
  int nodes = 100;
  std::uint64_t seed = 1;
  Options membership = Options::Lan();
  SimNetworkOptions network;
  // true: every node starts knowing every other alive (a running cluster);
  // false: node 0 starts alone and the others join through it, one by one
  // every `join_spacing`.
  bool converged_start = true;
  core::Duration join_spacing = std::chrono::milliseconds(10);
};

class Simulator {
 public:
  explicit Simulator(SimulatorOptions options);
  ~Simulator();

  // Simulated seconds since the start.
  double now_s() const;
  void RunFor(core::Duration d);
  // Runs in `step`s until `done` or `limit`; returns whether `done` held.
  bool RunUntil(const std::function<bool()>& done, core::Duration limit,
                core::Duration step = std::chrono::milliseconds(50));

  int size() const { return static_cast<int>(nodes_.size()); }
  // A crash: the node stops and the network drops its traffic.
  void Crash(int node);
  // A graceful leave.
  void Leave(int node);
  // A new node joining through `seed` (an index); returns its index.
  int Join(int seed = 0);
  void Partition(const std::vector<int>& a, const std::vector<int>& b);
  void Heal();
  void SetLoss(double loss);

  bool IsUp(int node) const { return up_[static_cast<std::size_t>(node)]; }
  // How many up nodes (other than `member`) see `member` in `state`.
  int CountSeeing(int member, MemberState state) const;
  // Every up node sees every up node alive, and every down node not alive.
  bool Converged() const;
  Membership& node(int i) { return *nodes_[static_cast<std::size_t>(i)]; }
  static std::string NameOf(int i);

  // Live members wrongly declared dead (by anyone) so far, and suspicions of
  // live members (refuted ones included).
  std::uint64_t false_deaths() const { return false_deaths_; }
  std::uint64_t false_suspicions() const { return false_suspicions_; }
  // Sum of every node's Stats plus network and clock counters.
  nlohmann::json Totals() const;

  // Experiments (each returns {"seconds","rounds","complete",...}; rounds =
  // simulated time / probe interval).
  // Crash `victim` and run until every up node sees it dead.
  nlohmann::json MeasureFailure(int victim, core::Duration limit);
  // A new node joins through node 0; run until every up node sees it alive.
  nlohmann::json MeasureJoin(core::Duration limit);

 private:
  int AddNode();
  SimulatorOptions options_;
  std::shared_ptr<SimClock> clock_;
  std::shared_ptr<SimNetwork> net_;
  std::vector<std::shared_ptr<Membership>> nodes_;
  std::vector<bool> up_;
  std::set<std::string> down_names_;
  core::TimePoint start_;
  std::uint64_t false_deaths_ = 0;
  std::uint64_t false_suspicions_ = 0;
};

}  // namespace omnirelay::mesh
