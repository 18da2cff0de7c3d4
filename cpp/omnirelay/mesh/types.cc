#include "omnirelay/mesh/types.h"

namespace omnirelay::mesh {

std::string_view MemberStateName(MemberState state) {
  switch (state) {
    case MemberState::kAlive:
      return "alive";
    case MemberState::kSuspect:
      return "suspect";
    case MemberState::kDead:
      return "dead";
    case MemberState::kLeft:
      return "left";
  }
  return "unknown";
}

std::optional<MemberState> ParseMemberState(std::string_view name) {
  for (auto state :
       {MemberState::kAlive, MemberState::kSuspect, MemberState::kDead, MemberState::kLeft}) {
    if (MemberStateName(state) == name) return state;
  }
  return std::nullopt;
}

std::string_view MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kPing:
      return "ping";
    case MessageType::kPingReq:
      return "ping-req";
    case MessageType::kAck:
      return "ack";
    case MessageType::kGossip:
      return "gossip";
    case MessageType::kPushPull:
      return "push-pull";
    case MessageType::kPushPullReply:
      return "push-pull-reply";
    case MessageType::kReject:
      return "reject";
  }
  return "unknown";
}

std::size_t Message::EstimateSize(const MemberRecord& r) {
  std::size_t size = 16 + r.id.size() + r.address.size() + r.from.size() + r.meta.region.size() +
                     r.meta.zone.size();
  for (const auto& role : r.meta.roles) size += role.size() + 2;
  for (const auto& [k, v] : r.meta.labels) size += k.size() + v.size() + 4;
  for (const auto& [k, v] : r.meta.endpoints) size += k.size() + v.size() + 4;
  return size;
}

}  // namespace omnirelay::mesh
