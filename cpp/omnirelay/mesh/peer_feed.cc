#include "omnirelay/mesh/peer_feed.h"

namespace omnirelay::mesh {

void FeedHealthTracker(Membership& membership,
                       std::shared_ptr<peers::PeerLeaseHealthTracker> tracker) {
  membership.AddListener([tracker](const MemberEvent& event) {
    const auto& m = event.member;
    switch (event.kind) {
      case MemberEvent::Kind::kJoin:
      case MemberEvent::Kind::kAlive:
      case MemberEvent::Kind::kUpdate: {
        std::map<std::string, std::string> meta = m.meta.labels;
        std::string roles;
        for (const auto& r : m.meta.roles) roles += (roles.empty() ? "" : ",") + r;
        meta["mesh.roles"] = roles;
        meta["mesh.region"] = m.meta.region;
        meta["mesh.zone"] = m.meta.zone;
        meta["mesh.address"] = m.address;
        tracker->SetMetadata(m.id, meta);
        tracker->RecordHeartbeat(m.id);
        break;
      }
      case MemberEvent::Kind::kHeartbeat:
        tracker->RecordHeartbeat(m.id);
        break;
      case MemberEvent::Kind::kSuspect:
        break;  // still eligible: a suspicion is not a verdict
      case MemberEvent::Kind::kDead:
        tracker->RecordDisconnect(m.id, "mesh: declared dead");
        break;
      case MemberEvent::Kind::kLeft:
        tracker->RecordDisconnect(m.id, "mesh: left the cluster");
        break;
      case MemberEvent::Kind::kRemoved:
        tracker->Forget(m.id);
        break;
    }
  });
}

}  // namespace omnirelay::mesh
