// Placeholder until the peer kit lands (issue: Peer kit); replaced by its bindings.
#include "bindings/registrations.h"

namespace omnirelay::bindings {
void RegisterPeers(pybind11::module_& m) {}
}  // namespace omnirelay::bindings
