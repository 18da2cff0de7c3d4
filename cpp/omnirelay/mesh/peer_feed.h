#pragma once
// Membership -> peer kit: a successful probe is a heartbeat in the
// PeerLeaseHealthTracker (and so are joins and revivals); a member declared
// dead or gone is a disconnect, with the reason; a reaped member is
// forgotten. The member's identity (roles, region, zone, labels) becomes the
// tracker's metadata, so /omnirelay/control/lease-health shows it.
// Thread-safety: the listener runs on Membership's flush path (any thread).
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "omnirelay/mesh/membership.h"
#include "omnirelay/peers/health_tracker.h"

namespace omnirelay::mesh {

// Call before membership->Start().
void FeedHealthTracker(Membership& membership,
                       std::shared_ptr<peers::PeerLeaseHealthTracker> tracker);

// Membership -> an outbound's peer list (docs/mesh.md "Outbounds from
// membership"): which members an outbound selects. Empty fields match
// everything; every label must be present with an equal value.
struct MemberSelector {
  std::string role;  // one of the member's roles
  std::string region;
  std::string zone;
  std::map<std::string, std::string> labels;
  bool Matches(const MemberMeta& meta) const;
};

// One peer for an outbound: the member id, its advertised data endpoint and
// its locality (for the geo chooser).
struct DataPeer {
  std::string id;
  std::string address;
  std::string region = {};  // defaulted: {id, address} initialisers stay valid
  std::string zone = {};
  bool operator==(const DataPeer&) const = default;
};

// The alive members (self included) matching `selector` that advertise a
// data endpoint for `transport` ("grpc", "http"), sorted by id. Suspect
// members are left out (routing moves off a member at the first sign of
// failure; a refuted suspicion brings it back), dead and left ones too.
std::vector<DataPeer> SelectDataPeers(const std::vector<Member>& members,
                                      const MemberSelector& selector, std::string_view transport);

// Keeps a peer list equal to SelectDataPeers over the live table: `apply`
// gets the new list after every membership event that can change it (join,
// alive, update, suspect, dead, left, removed; not heartbeats), never two
// at once and never an older list after a newer one (the table is re-read
// under the feed's own mutex). Call before membership.Start(). `apply` runs
// on the membership's listener thread and must not block for long.
void FeedPeerList(Membership& membership, MemberSelector selector, std::string transport,
                  std::function<void(const std::vector<DataPeer>&)> apply);

}  // namespace omnirelay::mesh
