#pragma once
// Membership -> peer kit: a successful probe is a heartbeat in the
// PeerLeaseHealthTracker (and so are joins and revivals); a member declared
// dead or gone is a disconnect, with the reason; a reaped member is
// forgotten. The member's identity (roles, region, zone, labels) becomes the
// tracker's metadata, so /omnirelay/control/lease-health shows it.
// Thread-safety: the listener runs on Membership's flush path (any thread).
#include <memory>

#include "omnirelay/mesh/membership.h"
#include "omnirelay/peers/health_tracker.h"

namespace omnirelay::mesh {

// Call before membership->Start().
void FeedHealthTracker(Membership& membership,
                       std::shared_ptr<peers::PeerLeaseHealthTracker> tracker);

}  // namespace omnirelay::mesh
