#pragma once
// Tunables of SWIM membership, modelled on hashicorp/memberlist (the LAN
// profile is memberlist's DefaultLANConfig) with Lifeguard's suspicion
// timeouts. Every option says what it trades. docs/mesh.md has the table.
#include <cstdint>
#include <optional>
#include <string>

#include "omnirelay/core/clock.h"

namespace omnirelay::mesh {

struct Options {
  // Members of another cluster are refused (a Reject names both names).
  std::string cluster_name = "omnirelay";

  // How often this node probes one member (round-robin over a shuffled list).
  // Shorter: failures are detected sooner; more probe traffic and CPU, and
  // a briefly slow peer is suspected sooner.
  core::Duration probe_interval = std::chrono::seconds(1);
  // How long a direct ping waits for its ack before k indirect probes start.
  // Must be well below probe_interval. Shorter: indirect probes start sooner;
  // too short for the network's p99 RTT and every probe goes indirect.
  core::Duration probe_timeout = std::chrono::milliseconds(500);
  // k: members asked to probe the target when the direct ping goes
  // unanswered. More: fewer false suspicions when one path is lossy; k more
  // messages per failed probe.
  int indirect_checks = 3;
  // Lifeguard suspicion timeout: min = suspicion_mult * max(1, log10(n)) *
  // probe_interval (n = live members), max = suspicion_max_timeout_mult * min;
  // the timeout starts at max and falls towards min as other members
  // independently confirm the suspicion (suspicion_mult - 2 confirmations
  // expected). Larger: a suspected member has longer to refute (fewer false
  // deaths under loss or a pause); slower detection of real failures.
  int suspicion_mult = 4;
  int suspicion_max_timeout_mult = 6;
  // A broadcast is piggybacked retransmit_mult * ceil(log10(n + 1)) times.
  // More: news reaches everyone with higher probability; bigger messages.
  int retransmit_mult = 4;
  // How often pending broadcasts are gossiped to gossip_nodes random members
  // (nothing is sent when there is nothing to say). Shorter/more nodes:
  // faster dissemination, more messages.
  core::Duration gossip_interval = std::chrono::milliseconds(200);
  int gossip_nodes = 3;
  // Dead members still receive gossip for this long, so a member wrongly
  // declared dead hears it and refutes. Longer: faster recovery from false
  // deaths; wasted messages to members that are really gone.
  core::Duration gossip_to_the_dead = std::chrono::seconds(30);
  // Full-state anti-entropy with one random member; scaled up by
  // ceil(log2(n) - log2(32)) + 1 above 32 members as memberlist does.
  // Shorter: lost updates are repaired sooner; each sync sends the whole table.
  core::Duration push_pull_interval = std::chrono::seconds(30);
  // How often a node retries its seeds while alone, and push-pulls with one
  // random dead member (Serf's reconnect), which is what heals a partition
  // once both sides have declared each other dead. Shorter: faster healing;
  // more traffic towards members that are really gone.
  core::Duration reconnect_interval = std::chrono::seconds(10);
  // Dead and left members are forgotten after this long (tombstones keep a
  // late, stale "alive" from resurrecting them meanwhile).
  core::Duration dead_retention = std::chrono::hours(1);
  // Piggyback budget per message (memberlist fits gossip into a UDP packet).
  std::size_t max_gossip_bytes = 1400;
  // Transport deadline for one gossip RPC (the gRPC transport).
  core::Duration send_timeout = std::chrono::seconds(1);
  // Seed of this node's random choices (probe order, gossip targets).
  std::uint64_t seed = 0;

  // memberlist's DefaultLANConfig: 1 s probes, 500 ms timeout, k = 3,
  // suspicion 4 x log10(n) s, 30 s push-pull.
  static Options Lan();
  // Fast failure detection for tests and small local clusters: 250 ms
  // probes, 125 ms timeout, suspicion 2 x max(1, log10(n)) x 250 ms, 2 s
  // push-pull. A kill -9 is seen dead by everyone of 10 nodes in ~1 s; the
  // price is 4 probes/s per node (~1 % of a core with gRPC) and false
  // suspicions on a badly overloaded host.
  static Options Test();
  // "lan" | "test"; nullopt for an unknown name.
  static std::optional<Options> Profile(const std::string& name);
};

// Lifeguard / memberlist formulas (n = estimated live members).
core::Duration SuspicionMinTimeout(const Options& options, std::size_t n);
core::Duration SuspicionMaxTimeout(const Options& options, std::size_t n);
// Expected independent confirmations before the timeout reaches its minimum.
int SuspicionConfirmationsExpected(const Options& options, std::size_t n);
// Remaining timeout after `confirmations` of `expected` confirmations.
core::Duration SuspicionTimeout(core::Duration min, core::Duration max, int expected,
                                int confirmations);
int RetransmitLimit(const Options& options, std::size_t n);
core::Duration PushPullInterval(const Options& options, std::size_t n);

}  // namespace omnirelay::mesh
