#pragma once
// The vocabulary of mesh membership: member states, identity metadata, the
// records gossip carries and the messages members exchange.
//
// Messages are plain structs; the gRPC transport encodes them as
// omnirelay.mesh.v1 protobufs (codec.h), the simulator passes them by
// shared_ptr without encoding. Thread-safety: values.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnirelay/core/clock.h"

namespace omnirelay::mesh {

// alive -> suspect -> dead; left is a graceful, announced departure.
enum class MemberState : std::uint8_t { kAlive = 0, kSuspect = 1, kDead = 2, kLeft = 3 };
std::string_view MemberStateName(MemberState state);  // "alive", "suspect", "dead", "left"
std::optional<MemberState> ParseMemberState(std::string_view name);

// What a member says about itself (seed 002's role map): roles, placement, labels.
struct MemberMeta {
  std::vector<std::string> roles;
  std::string region;
  std::string zone;
  std::map<std::string, std::string> labels;
  // Data-plane endpoints by transport ("grpc" -> host:port, "http" ->
  // host:port): where outbounds that take their peers from membership dial
  // this member (the gossip `address` may be an internal listener).
  std::map<std::string, std::string> endpoints;
  bool operator==(const MemberMeta&) const = default;
};

// One member as gossip carries it. `incarnation` orders statements about a
// member: only the member itself increases it (to refute a suspicion or to
// publish new metadata), so a higher incarnation always wins and, at equal
// incarnations, suspect beats alive and dead/left beat suspect.
struct MemberRecord {
  std::string id;
  std::string address;  // advertised gossip endpoint (host:port)
  MemberMeta meta;
  MemberState state = MemberState::kAlive;
  std::uint64_t incarnation = 0;
  std::string from;  // for suspect/dead: the member that raised it
};

// A member as this node sees it.
struct Member {
  MemberRecord record;
  core::TimePoint state_changed{};
  core::TimePoint last_seen{};  // last direct evidence of life (ack, message from it)
};

enum class MessageType : std::uint8_t {
  kPing = 1,      // direct probe; answered with kAck
  kPingReq = 2,   // "probe `target` for me" (indirect probe through k members)
  kAck = 3,       // answer to a ping (relayed back for an indirect probe)
  kGossip = 4,    // piggyback-only message (dissemination, leave announcements)
  kPushPull = 5,  // full-state anti-entropy (and join), answered with kPushPullReply
  kPushPullReply = 6,
  kReject = 7,  // refusal: wrong cluster name, node id collision
};
std::string_view MessageTypeName(MessageType type);

struct Message {
  MessageType type = MessageType::kGossip;
  std::string cluster;       // sender's cluster name; other clusters are refused
  std::string from;          // sender's node id
  std::string from_address;  // sender's advertised address (for replies)
  std::uint64_t seq = 0;     // ping/ping-req/ack correlation
  std::string target;        // ping: the intended node id; ping-req: who to probe
  std::string target_address;
  bool join = false;                  // push-pull sent by a joining node
  std::vector<MemberRecord> updates;  // piggybacked broadcasts
  std::vector<MemberRecord> state;    // push-pull: the sender's whole table
  std::string reason;                 // reject: why

  // Rough wire size, used to bound piggybacking like memberlist's UDP budget.
  static std::size_t EstimateSize(const MemberRecord& record);
};

using MessagePtr = std::shared_ptr<const Message>;

}  // namespace omnirelay::mesh
