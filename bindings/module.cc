#include <pybind11/pybind11.h>

#include "bindings/registrations.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "OmniRelay C++ core (private: use the `omnirelay` package)";
  omnirelay::bindings::RegisterCore(m);
  omnirelay::bindings::RegisterPeers(m);
  omnirelay::bindings::RegisterNode(m);
  omnirelay::bindings::RegisterResourceLease(m);
  omnirelay::bindings::RegisterMesh(m);
}
