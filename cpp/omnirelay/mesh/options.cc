#include "omnirelay/mesh/options.h"

#include <algorithm>
#include <cmath>

namespace omnirelay::mesh {

Options Options::Lan() { return Options{}; }

Options Options::Test() {
  Options o;
  o.probe_interval = std::chrono::milliseconds(250);
  o.probe_timeout = std::chrono::milliseconds(125);
  o.indirect_checks = 3;
  o.suspicion_mult = 2;
  o.suspicion_max_timeout_mult = 6;
  o.retransmit_mult = 4;
  o.gossip_interval = std::chrono::milliseconds(50);
  o.gossip_nodes = 3;
  o.gossip_to_the_dead = std::chrono::seconds(2);
  o.push_pull_interval = std::chrono::seconds(2);
  o.reconnect_interval = std::chrono::seconds(1);
  o.dead_retention = std::chrono::minutes(10);
  o.send_timeout = std::chrono::milliseconds(500);
  return o;
}

std::optional<Options> Options::Profile(const std::string& name) {
  if (name == "lan") return Lan();
  if (name == "test") return Test();
  return std::nullopt;
}

core::Duration SuspicionMinTimeout(const Options& o, std::size_t n) {
  const double scale = std::max(1.0, std::log10(std::max(1.0, static_cast<double>(n))));
  return std::chrono::duration_cast<core::Duration>(
      o.suspicion_mult * scale * std::chrono::duration<double, std::nano>(o.probe_interval));
}

core::Duration SuspicionMaxTimeout(const Options& o, std::size_t n) {
  return o.suspicion_max_timeout_mult * SuspicionMinTimeout(o, n);
}

int SuspicionConfirmationsExpected(const Options& o, std::size_t n) {
  const int k = o.suspicion_mult - 2;
  // Too few other members to ever confirm: go straight to the minimum.
  if (static_cast<int>(n) - 2 < k) return 0;
  return std::max(0, k);
}

core::Duration SuspicionTimeout(core::Duration min, core::Duration max, int expected,
                                int confirmations) {
  if (expected < 1) return min;
  const double frac = std::log(static_cast<double>(confirmations) + 1.0) /
                      std::log(static_cast<double>(expected) + 1.0);
  const auto raw = max - std::chrono::duration_cast<core::Duration>(
                             frac * std::chrono::duration<double, std::nano>(max - min));
  return std::max(raw, min);
}

int RetransmitLimit(const Options& o, std::size_t n) {
  const double scale = std::ceil(std::log10(static_cast<double>(n) + 1.0));
  return std::max(1, o.retransmit_mult * static_cast<int>(scale));
}

core::Duration PushPullInterval(const Options& o, std::size_t n) {
  constexpr double kThreshold = 32;
  if (static_cast<double>(n) <= kThreshold) return o.push_pull_interval;
  const double mult = std::ceil(std::log2(static_cast<double>(n)) - std::log2(kThreshold)) + 1.0;
  return std::chrono::duration_cast<core::Duration>(
      mult * std::chrono::duration<double, std::nano>(o.push_pull_interval));
}

}  // namespace omnirelay::mesh
