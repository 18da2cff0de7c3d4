#include "omnirelay/mesh/peer_feed.h"

#include <algorithm>
#include <mutex>
#include <optional>

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

bool MemberSelector::Matches(const MemberMeta& meta) const {
  if (!role.empty() && std::find(meta.roles.begin(), meta.roles.end(), role) == meta.roles.end()) {
    return false;
  }
  if (!region.empty() && meta.region != region) return false;
  if (!zone.empty() && meta.zone != zone) return false;
  for (const auto& [key, value] : labels) {
    auto it = meta.labels.find(key);
    if (it == meta.labels.end() || it->second != value) return false;
  }
  return true;
}

std::vector<DataPeer> SelectDataPeers(const std::vector<Member>& members,
                                      const MemberSelector& selector, std::string_view transport) {
  std::vector<DataPeer> out;
  for (const auto& member : members) {
    const auto& r = member.record;
    if (r.state != MemberState::kAlive || !selector.Matches(r.meta)) continue;
    auto endpoint = r.meta.endpoints.find(std::string(transport));
    if (endpoint == r.meta.endpoints.end() || endpoint->second.empty()) continue;
    out.push_back({r.id, endpoint->second, r.meta.region, r.meta.zone});
  }
  std::sort(out.begin(), out.end(),
            [](const DataPeer& a, const DataPeer& b) { return a.id < b.id; });
  return out;
}

void FeedPeerList(Membership& membership, MemberSelector selector, std::string transport,
                  std::function<void(const std::vector<DataPeer>&)> apply) {
  struct Feed {
    std::mutex mu;
    std::optional<std::vector<DataPeer>> last;
  };
  auto feed = std::make_shared<Feed>();
  // The listener holds the membership weakly: membership owns its listeners.
  std::weak_ptr<Membership> weak = membership.weak_from_this();
  auto refresh = [feed, weak, selector = std::move(selector), transport = std::move(transport),
                  apply = std::move(apply)] {
    auto strong = weak.lock();
    if (!strong) return;
    std::lock_guard lock(feed->mu);
    auto peers = SelectDataPeers(strong->Members(), selector, transport);
    if (feed->last && *feed->last == peers) return;
    feed->last = peers;
    apply(peers);
  };
  membership.AddListener([refresh](const MemberEvent& event) {
    if (event.kind == MemberEvent::Kind::kHeartbeat) return;
    refresh();
  });
  refresh();  // self, before any event
}

}  // namespace omnirelay::mesh
