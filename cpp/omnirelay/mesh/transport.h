#pragma once
// The seam under membership: send a message to a member, best effort.
//
// Implementations: GrpcGossipTransport (grpc_transport.h) for real nodes,
// the simulated network (simulator.h) for the simulator and tests.
// Received messages are handed to Membership::HandleMessage by whoever owns
// the receiving side.
#include <string>

#include "omnirelay/mesh/types.h"

namespace omnirelay::mesh {

class Transport {
 public:
  virtual ~Transport() = default;
  // Sends `message` to member `to_id` (empty when only the address is known,
  // e.g. a seed) at `address`. Never blocks and never calls back into the
  // sender synchronously; loss is silent (SWIM tolerates it by design).
  // Thread-safe.
  virtual void Send(const std::string& to_id, const std::string& address, MessagePtr message) = 0;
};

}  // namespace omnirelay::mesh
