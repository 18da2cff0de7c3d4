#pragma once
// One Register<Area>() per binding file; module.cc calls them in dependency order.
#include <pybind11/pybind11.h>

namespace omnirelay::bindings {
void RegisterCore(pybind11::module_& m);
void RegisterPeers(pybind11::module_& m);
void RegisterNode(pybind11::module_& m);
void RegisterResourceLease(pybind11::module_& m);
void RegisterMesh(pybind11::module_& m);
}  // namespace omnirelay::bindings
