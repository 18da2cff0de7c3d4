// Bindings of the mesh simulator (cpp/omnirelay/mesh/simulator.h): Python
// runs hundreds to thousands of simulated members from a seed (the
// hyperscale suite's scale tier and benchmarks/mesh_simulation.py).
// Every call that advances simulated time releases the GIL. Results cross
// as plain dicts (JSON).
#include <pybind11/chrono.h>
#include <pybind11/stl.h>

#include "bindings/registrations.h"
#include "omnirelay/mesh/simulator.h"
#include "omnirelay/shards/hash.h"

namespace py = pybind11;

namespace omnirelay::bindings {
namespace {

using namespace omnirelay::mesh;

py::object Json(const nlohmann::json& json) {
  return py::module_::import("json").attr("loads")(json.dump());
}

core::Duration Seconds(double s) {
  return std::chrono::duration_cast<core::Duration>(std::chrono::duration<double>(s));
}

}  // namespace

void RegisterMesh(py::module_& root) {
  auto m = root.def_submodule("mesh", "mesh membership: the deterministic simulator");
  // The shard of a key (docs/shards.md "the hashing contract"): scenarios pick
  // keys that land on a chosen shard.
  m.def(
      "shard_of_key",
      [](const std::string& key, std::uint32_t shard_count) {
        if (shard_count == 0) throw py::value_error("shard_count must be >= 1");
        return shards::ShardOfKey(key, shard_count);
      },
      py::arg("key"), py::arg("shard_count"));
  py::class_<Simulator>(m, "Simulator")
      .def(py::init([](int nodes, std::uint64_t seed, const std::string& profile, double loss,
                       double min_latency_ms, double max_latency_ms, bool converged_start) {
             auto membership = Options::Profile(profile);
             if (!membership)
               throw py::value_error("unknown profile '" + profile + "' (lan, test)");
             if (nodes < 1) throw py::value_error("nodes must be >= 1");
             if (loss < 0 || loss >= 1) throw py::value_error("loss must be within [0, 1)");
             SimulatorOptions o;
             o.nodes = nodes;
             o.seed = seed;
             o.membership = *membership;
             o.membership.cluster_name = "sim";
             o.network.loss = loss;
             o.network.min_latency = Seconds(min_latency_ms / 1000.0);
             o.network.max_latency = Seconds(max_latency_ms / 1000.0);
             o.converged_start = converged_start;
             py::gil_scoped_release release;
             return std::make_unique<Simulator>(o);
           }),
           py::arg("nodes"), py::arg("seed") = 1, py::arg("profile") = "lan", py::arg("loss") = 0.0,
           py::arg("min_latency_ms") = 0.5, py::arg("max_latency_ms") = 2.0,
           py::arg("converged_start") = true)
      .def_property_readonly("now_s", &Simulator::now_s)
      .def_property_readonly("size", &Simulator::size)
      .def(
          "run_for",
          [](Simulator& s, double seconds) {
            py::gil_scoped_release release;
            s.RunFor(Seconds(seconds));
          },
          py::arg("seconds"))
      .def(
          "run_until_converged",
          [](Simulator& s, double limit_s) {
            py::gil_scoped_release release;
            return s.RunUntil([&] { return s.Converged(); }, Seconds(limit_s));
          },
          py::arg("limit_s"))
      .def("crash", &Simulator::Crash, py::arg("node"))
      .def("leave", &Simulator::Leave, py::arg("node"))
      .def("join", &Simulator::Join, py::arg("seed") = 0)
      .def("partition", &Simulator::Partition, py::arg("a"), py::arg("b"))
      .def("heal", &Simulator::Heal)
      .def("set_loss", &Simulator::SetLoss, py::arg("loss"))
      .def("converged", &Simulator::Converged)
      .def(
          "count_seeing",
          [](const Simulator& s, int member, const std::string& state) {
            auto parsed = ParseMemberState(state);
            if (!parsed) throw py::value_error("unknown state '" + state + "'");
            return s.CountSeeing(member, *parsed);
          },
          py::arg("member"), py::arg("state"))
      .def("is_up", &Simulator::IsUp, py::arg("node"))
      .def(
          "view", [](Simulator& s, int node) { return Json(s.node(node).ToJson()); },
          py::arg("node"))
      .def_property_readonly("false_deaths", &Simulator::false_deaths)
      .def_property_readonly("false_suspicions", &Simulator::false_suspicions)
      .def("totals", [](const Simulator& s) { return Json(s.Totals()); })
      .def(
          "measure_failure",
          [](Simulator& s, int victim, double limit_s) {
            nlohmann::json out;
            {
              py::gil_scoped_release release;
              out = s.MeasureFailure(victim, Seconds(limit_s));
            }
            return Json(out);
          },
          py::arg("victim"), py::arg("limit_s") = 300.0)
      .def(
          "measure_join",
          [](Simulator& s, double limit_s) {
            nlohmann::json out;
            {
              py::gil_scoped_release release;
              out = s.MeasureJoin(Seconds(limit_s));
            }
            return Json(out);
          },
          py::arg("limit_s") = 300.0);
}

}  // namespace omnirelay::bindings
