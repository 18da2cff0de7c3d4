#pragma once
// Message <-> omnirelay.mesh.v1.GossipMessage bytes. Decoding validates what
// the protocol relies on (a known type, a sender id and address, sane
// records) so a malformed message is refused here, counted by the caller
// and never reaches Membership. Thread-safety: pure functions.
#include <string>

#include "omnirelay/core/status.h"
#include "omnirelay/mesh/types.h"

namespace omnirelay::mesh {

std::string EncodeMessage(const Message& message);
// InvalidArgument naming the problem for bytes that are not a valid message.
absl::StatusOr<Message> DecodeMessage(const std::string& bytes);

}  // namespace omnirelay::mesh
