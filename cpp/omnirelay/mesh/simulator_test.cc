// Simulation tests with fixed seeds, small sizes (CI). The full-size figures
// (100 / 1,000 / 5,000 nodes, 10 simulated minutes at 1 % loss) come from
// benchmarks/mesh_simulation.py; docs/mesh.md quotes them.
#include "omnirelay/mesh/simulator.h"

#include <gtest/gtest.h>

namespace omnirelay::mesh {
namespace {

using std::chrono::seconds;

SimulatorOptions Lan(int nodes, std::uint64_t seed) {
  SimulatorOptions o;
  o.nodes = nodes;
  o.seed = seed;
  o.membership = Options::Lan();
  o.membership.cluster_name = "sim";
  return o;
}

TEST(SimulatorTest, FailureReachesEveryNodeInLogarithmicRounds) {
  Simulator sim(Lan(100, 7));
  sim.RunFor(seconds(5));
  auto result = sim.MeasureFailure(42, seconds(120));
  ASSERT_TRUE(result["complete"].get<bool>()) << result.dump();
  // Detection (~1 probe round to be probed at all, one to fail) + the
  // suspicion timeout (4 x log10(100) = 8 rounds, shortened by confirmations
  // down to its minimum) + dissemination in O(log N) gossip rounds.
  EXPECT_LT(result["rounds"].get<double>(), 60.0) << result.dump();
  EXPECT_EQ(sim.false_deaths(), 0u);
}

TEST(SimulatorTest, JoinReachesEveryNode) {
  Simulator sim(Lan(100, 8));
  sim.RunFor(seconds(2));
  auto result = sim.MeasureJoin(seconds(60));
  ASSERT_TRUE(result["complete"].get<bool>()) << result.dump();
  EXPECT_LT(result["rounds"].get<double>(), 10.0) << result.dump();
}

TEST(SimulatorTest, NoFalseDeathsAtOnePercentLoss) {
  auto options = Lan(60, 9);
  options.network.loss = 0.01;
  Simulator sim(options);
  sim.RunFor(seconds(120));
  EXPECT_EQ(sim.false_deaths(), 0u) << sim.Totals().dump();
  EXPECT_TRUE(sim.Converged());
}

TEST(SimulatorTest, ClusterBuiltByJoinsConverges) {
  auto options = Lan(40, 10);
  options.converged_start = false;
  Simulator sim(options);
  EXPECT_TRUE(sim.RunUntil([&] { return sim.Converged(); }, seconds(60))) << sim.Totals().dump();
}

TEST(SimulatorTest, PartitionHealsIntoOneView) {
  auto options = Lan(30, 11);
  options.membership = Options::Test();
  options.membership.cluster_name = "sim";
  Simulator sim(options);
  sim.RunFor(seconds(2));
  std::vector<int> a, b;
  for (int i = 0; i < 30; ++i) (i < 20 ? a : b).push_back(i);
  sim.Partition(a, b);
  // Both sides declare the other dead.
  ASSERT_TRUE(sim.RunUntil(
      [&] {
        return sim.CountSeeing(25, MemberState::kDead) >= 20 &&
               sim.CountSeeing(5, MemberState::kDead) >= 10;
      },
      seconds(30)));
  sim.Heal();
  EXPECT_TRUE(sim.RunUntil([&] { return sim.Converged(); }, seconds(30))) << sim.Totals().dump();
}

TEST(SimulatorTest, SameSeedSameRun) {
  auto run = [](std::uint64_t seed) {
    auto options = Lan(50, seed);
    options.network.loss = 0.05;
    Simulator sim(options);
    sim.RunFor(seconds(30));
    sim.Crash(3);
    sim.RunFor(seconds(30));
    return sim.Totals();
  };
  const auto first = run(5);
  EXPECT_EQ(first, run(5));
  EXPECT_NE(first, run(6));
}

}  // namespace
}  // namespace omnirelay::mesh
