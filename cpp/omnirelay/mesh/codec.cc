#include "omnirelay/mesh/codec.h"

#include "omnirelay/mesh/v1/gossip.pb.h"

namespace omnirelay::mesh {
namespace {

namespace pb = ::omnirelay::mesh::v1;

void ToProto(const MemberRecord& r, pb::MemberRecord* out) {
  out->set_id(r.id);
  out->set_address(r.address);
  for (const auto& role : r.meta.roles) out->add_roles(role);
  out->set_region(r.meta.region);
  out->set_zone(r.meta.zone);
  for (const auto& [k, v] : r.meta.labels) (*out->mutable_labels())[k] = v;
  for (const auto& [k, v] : r.meta.endpoints) (*out->mutable_endpoints())[k] = v;
  out->set_state(static_cast<pb::MemberState>(r.state));
  out->set_incarnation(r.incarnation);
  out->set_from(r.from);
}

absl::Status FromProto(const pb::MemberRecord& in, MemberRecord& r) {
  if (in.id().empty()) return absl::InvalidArgumentError("member record without an id");
  if (in.state() < pb::MEMBER_STATE_ALIVE || in.state() > pb::MEMBER_STATE_LEFT) {
    return absl::InvalidArgumentError("member '" + in.id() + "' has an unknown state");
  }
  r.id = in.id();
  r.address = in.address();
  r.meta.roles.assign(in.roles().begin(), in.roles().end());
  r.meta.region = in.region();
  r.meta.zone = in.zone();
  r.meta.labels = std::map<std::string, std::string>(in.labels().begin(), in.labels().end());
  r.meta.endpoints =
      std::map<std::string, std::string>(in.endpoints().begin(), in.endpoints().end());
  r.state = static_cast<MemberState>(in.state());
  r.incarnation = in.incarnation();
  r.from = in.from();
  return absl::OkStatus();
}

}  // namespace

std::string EncodeMessage(const Message& m) {
  pb::GossipMessage out;
  out.set_type(static_cast<pb::MessageType>(m.type));
  out.set_cluster(m.cluster);
  out.set_from(m.from);
  out.set_from_address(m.from_address);
  out.set_seq(m.seq);
  out.set_target(m.target);
  out.set_target_address(m.target_address);
  out.set_join(m.join);
  for (const auto& r : m.updates) ToProto(r, out.add_updates());
  for (const auto& r : m.state) ToProto(r, out.add_state());
  out.set_reason(m.reason);
  return out.SerializeAsString();
}

absl::StatusOr<Message> DecodeMessage(const std::string& bytes) {
  pb::GossipMessage in;
  if (!in.ParseFromString(bytes)) return absl::InvalidArgumentError("not a GossipMessage");
  if (in.type() < pb::MESSAGE_TYPE_PING || in.type() > pb::MESSAGE_TYPE_REJECT) {
    return absl::InvalidArgumentError("unknown message type " + std::to_string(in.type()));
  }
  if (in.from().empty()) return absl::InvalidArgumentError("message without a sender id");
  if (in.from_address().empty()) {
    return absl::InvalidArgumentError("message without a sender address");
  }
  Message m;
  m.type = static_cast<MessageType>(in.type());
  m.cluster = in.cluster();
  m.from = in.from();
  m.from_address = in.from_address();
  m.seq = in.seq();
  m.target = in.target();
  m.target_address = in.target_address();
  m.join = in.join();
  m.reason = in.reason();
  m.updates.resize(static_cast<std::size_t>(in.updates_size()));
  for (int i = 0; i < in.updates_size(); ++i) {
    if (auto s = FromProto(in.updates(i), m.updates[static_cast<std::size_t>(i)]); !s.ok()) {
      return s;
    }
  }
  m.state.resize(static_cast<std::size_t>(in.state_size()));
  for (int i = 0; i < in.state_size(); ++i) {
    if (auto s = FromProto(in.state(i), m.state[static_cast<std::size_t>(i)]); !s.ok()) return s;
  }
  return m;
}

}  // namespace omnirelay::mesh
