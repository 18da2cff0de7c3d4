// Bindings of the peer kit (cpp/omnirelay/peers): descriptors, peers,
// breakers, the health tracker, choosers and the PeerListCoordinator.
// Times cross as float epoch seconds, durations as timedelta or float seconds.
// PeerListCoordinator.acquire releases the GIL: it may block until a peer
// frees up or the deadline passes (another Python thread then drives the
// ManualClock or releases a lease).
#include <pybind11/chrono.h>
#include <pybind11/stl.h>

#include "bindings/registrations.h"
#include "bindings/status_conversion.h"
#include "omnirelay/peers/chooser.h"
#include "omnirelay/peers/circuit_breaker.h"
#include "omnirelay/peers/coordinator.h"
#include "omnirelay/peers/health_tracker.h"
#include "omnirelay/peers/peer.h"
#include "omnirelay/peers/peer_metrics.h"

namespace py = pybind11;

namespace omnirelay::bindings {
namespace {

using core::Duration;
using core::TimePoint;
using namespace omnirelay::peers;

std::optional<double> Epoch(const std::optional<TimePoint>& time) {
  if (!time) return std::nullopt;
  return std::chrono::duration<double>(time->time_since_epoch()).count();
}

py::object JsonToPython(const nlohmann::json& json) {
  return py::module_::import("json").attr("loads")(json.dump());
}

py::dict BreakerToDict(const BreakerSnapshot& b) {
  py::dict out;
  out["state"] = std::string(BreakerStateName(b.state));
  out["consecutive_failures"] = b.consecutive_failures;
  out["consecutive_opens"] = b.consecutive_opens;
  out["probes_in_flight"] = b.probes_in_flight;
  out["transitions"] = b.transitions;
  out["reopen_at"] = Epoch(b.reopen_at);
  return out;
}

py::dict PeerStateToDict(const PeerState& s) {
  py::dict out;
  out["id"] = s.descriptor.id;
  out["endpoint"] = s.descriptor.endpoint;
  out["role"] = s.descriptor.role;
  out["region"] = s.descriptor.region;
  out["zone"] = s.descriptor.zone;
  out["labels"] = s.descriptor.labels;
  out["protocols"] = s.descriptor.protocols;
  out["status"] = std::string(PeerStatusName(s.status));
  out["eligible"] = s.eligible;
  out["health_eligible"] = s.health_eligible;
  out["inflight"] = s.inflight;
  out["max_inflight"] = s.max_inflight;
  out["successes"] = s.successes;
  out["failures"] = s.failures;
  out["last_success"] = Epoch(s.last_success);
  out["last_failure"] = Epoch(s.last_failure);
  out["latency_ewma_ms"] = s.latency_ewma_ms;
  py::dict latency;
  latency["samples"] = s.latency.samples;
  latency["p50_ms"] = s.latency.p50_ms;
  latency["p90_ms"] = s.latency.p90_ms;
  latency["p99_ms"] = s.latency.p99_ms;
  out["latency"] = latency;
  out["breaker"] = s.breaker ? py::object(BreakerToDict(*s.breaker)) : py::none();
  return out;
}

PeerDescriptor MakeDescriptor(std::string id, std::string endpoint, std::string role,
                              std::string region, std::string zone,
                              std::map<std::string, std::string> labels,
                              std::vector<std::string> protocols, PeerStatus status) {
  PeerDescriptor d;
  d.id = std::move(id);
  d.endpoint = std::move(endpoint);
  d.role = std::move(role);
  d.region = std::move(region);
  d.zone = std::move(zone);
  d.labels = std::move(labels);
  d.protocols = std::move(protocols);
  d.status = status;
  return d;
}

}  // namespace

void RegisterPeers(py::module_& m) {
  py::enum_<PeerStatus>(m, "PeerStatus")
      .value("UNKNOWN", PeerStatus::kUnknown)
      .value("AVAILABLE", PeerStatus::kAvailable)
      .value("UNAVAILABLE", PeerStatus::kUnavailable);
  py::enum_<BreakerState>(m, "BreakerState")
      .value("CLOSED", BreakerState::kClosed)
      .value("OPEN", BreakerState::kOpen)
      .value("HALF_OPEN", BreakerState::kHalfOpen);
  py::enum_<AcquireResult>(m, "AcquireResult")
      .value("ACQUIRED", AcquireResult::kAcquired)
      .value("BUSY", AcquireResult::kBusy)
      .value("UNHEALTHY", AcquireResult::kUnhealthy)
      .value("CIRCUIT_OPEN", AcquireResult::kCircuitOpen);

  py::class_<PeerDescriptor>(m, "PeerDescriptor")
      .def(py::init(&MakeDescriptor), py::arg("id") = "", py::arg("endpoint") = "",
           py::arg("role") = "", py::arg("region") = "", py::arg("zone") = "",
           py::arg("labels") = std::map<std::string, std::string>{},
           py::arg("protocols") = std::vector<std::string>{},
           py::arg("status") = PeerStatus::kUnknown)
      .def_readwrite("id", &PeerDescriptor::id)
      .def_readwrite("endpoint", &PeerDescriptor::endpoint)
      .def_readwrite("role", &PeerDescriptor::role)
      .def_readwrite("region", &PeerDescriptor::region)
      .def_readwrite("zone", &PeerDescriptor::zone)
      .def_readwrite("labels", &PeerDescriptor::labels)
      .def_readwrite("protocols", &PeerDescriptor::protocols)
      .def_readwrite("status", &PeerDescriptor::status)
      .def("supports_protocol", &PeerDescriptor::SupportsProtocol)
      .def_property_readonly("supports_http3", &PeerDescriptor::SupportsHttp3)
      .def("__repr__", [](const PeerDescriptor& d) {
        return "PeerDescriptor(id='" + d.id + "', endpoint='" + d.endpoint + "')";
      });

  py::class_<CircuitBreakerOptions>(m, "CircuitBreakerOptions")
      .def(py::init([](int consecutive_failures, double failure_ratio, int ratio_window,
                       int ratio_min_requests, Duration base_open_delay, Duration max_open_delay,
                       double backoff_multiplier, int half_open_probes) {
             CircuitBreakerOptions o;
             o.consecutive_failures = consecutive_failures;
             o.failure_ratio = failure_ratio;
             o.ratio_window = ratio_window;
             o.ratio_min_requests = ratio_min_requests;
             o.base_open_delay = base_open_delay;
             o.max_open_delay = max_open_delay;
             o.backoff_multiplier = backoff_multiplier;
             o.half_open_probes = half_open_probes;
             return o;
           }),
           py::arg("consecutive_failures") = 5, py::arg("failure_ratio") = 0.0,
           py::arg("ratio_window") = 20, py::arg("ratio_min_requests") = 10,
           py::arg("base_open_delay") = Duration(std::chrono::seconds(1)),
           py::arg("max_open_delay") = Duration(std::chrono::seconds(60)),
           py::arg("backoff_multiplier") = 2.0, py::arg("half_open_probes") = 1)
      .def_readwrite("consecutive_failures", &CircuitBreakerOptions::consecutive_failures)
      .def_readwrite("failure_ratio", &CircuitBreakerOptions::failure_ratio)
      .def_readwrite("base_open_delay", &CircuitBreakerOptions::base_open_delay)
      .def_readwrite("max_open_delay", &CircuitBreakerOptions::max_open_delay)
      .def_readwrite("half_open_probes", &CircuitBreakerOptions::half_open_probes);

  py::class_<CircuitBreaker, std::shared_ptr<CircuitBreaker>>(m, "CircuitBreaker")
      .def(py::init([](std::shared_ptr<core::Clock> clock, std::optional<CircuitBreakerOptions> o) {
             return CircuitBreaker::Create(o.value_or(CircuitBreakerOptions{}), std::move(clock));
           }),
           py::arg("clock"), py::arg("options") = py::none())
      .def_property_readonly("state", &CircuitBreaker::state)
      .def(
          "try_admit",
          [](CircuitBreaker& b) {
            switch (b.TryAdmit()) {
              case CircuitBreaker::Admission::kAdmitted:
                return std::string("admitted");
              case CircuitBreaker::Admission::kProbe:
                return std::string("probe");
              case CircuitBreaker::Admission::kRejected:
                break;
            }
            return std::string("rejected");
          },
          "'admitted', 'probe' (half-open; report with probe=True) or 'rejected'.")
      .def("record_outcome", &CircuitBreaker::RecordOutcome, py::arg("code"),
           py::arg("probe") = false)
      .def("snapshot", [](const CircuitBreaker& b) { return BreakerToDict(b.Snapshot()); });

  py::class_<Peer, std::shared_ptr<Peer>>(m, "Peer")
      .def(py::init([](PeerDescriptor descriptor, std::shared_ptr<core::Clock> clock,
                       int max_inflight, std::optional<CircuitBreakerOptions> breaker,
                       bool breaker_enabled, double ewma_alpha,
                       std::shared_ptr<core::MetricsRegistry> metrics) {
             PeerOptions options;
             options.max_inflight = max_inflight;
             options.breaker = breaker_enabled
                                   ? std::optional(breaker.value_or(CircuitBreakerOptions{}))
                                   : std::nullopt;
             options.ewma_alpha = ewma_alpha;
             return Peer::Create(std::move(descriptor), options, std::move(clock),
                                 std::move(metrics));
           }),
           py::arg("descriptor"), py::arg("clock"), py::arg("max_inflight") = 0,
           py::arg("breaker") = py::none(), py::arg("breaker_enabled") = true,
           py::arg("ewma_alpha") = 0.3, py::arg("metrics") = nullptr)
      .def_property_readonly("id", &Peer::id)
      .def_property_readonly("descriptor", &Peer::descriptor)
      .def_property("status", &Peer::status, &Peer::SetStatus)
      .def_property_readonly("inflight", &Peer::inflight)
      .def_property_readonly("max_inflight", &Peer::max_inflight)
      .def_property_readonly("eligible", &Peer::IsEligible)
      .def_property_readonly("breaker_state",
                             [](const Peer& p) -> std::optional<BreakerState> {
                               if (!p.breaker()) return std::nullopt;
                               return p.breaker()->state();
                             })
      .def(
          "try_acquire",
          [](Peer& p) {
            auto admission = p.TryAcquire();
            return std::make_pair(admission.result, admission.probe);
          },
          "Returns (AcquireResult, probe).")
      .def("release", &Peer::Release, py::arg("code"), py::arg("latency"), py::arg("probe") = false)
      .def("record_feedback", &Peer::RecordFeedback, py::arg("code"), py::arg("rtt"),
           "Feed the outcome/RTT of a call made outside a lease (control plane).")
      .def_property_readonly("latency_ewma_ms", &Peer::LatencyEwmaMs)
      .def("latency_percentiles",
           [](const Peer& p) {
             auto l = p.WindowPercentiles();
             py::dict out;
             out["samples"] = l.samples;
             out["p50_ms"] = l.p50_ms;
             out["p90_ms"] = l.p90_ms;
             out["p99_ms"] = l.p99_ms;
             return out;
           })
      .def("snapshot", [](const Peer& p) { return PeerStateToDict(p.Snapshot()); });

  py::class_<PeerLeaseHealthTracker, std::shared_ptr<PeerLeaseHealthTracker>>(
      m, "PeerLeaseHealthTracker")
      .def(py::init([](std::shared_ptr<core::Clock> clock, Duration heartbeat_grace,
                       std::shared_ptr<core::MetricsRegistry> metrics) {
             PeerLeaseHealthOptions options;
             options.heartbeat_grace = heartbeat_grace;
             return PeerLeaseHealthTracker::Create(options, std::move(clock), std::move(metrics));
           }),
           py::arg("clock"), py::arg("heartbeat_grace") = Duration(std::chrono::seconds(10)),
           py::arg("metrics") = nullptr)
      .def("record_heartbeat", &PeerLeaseHealthTracker::RecordHeartbeat)
      .def("record_disconnect", &PeerLeaseHealthTracker::RecordDisconnect, py::arg("peer_id"),
           py::arg("reason"))
      .def("record_lease_assigned", &PeerLeaseHealthTracker::RecordLeaseAssigned)
      .def("record_lease_released", &PeerLeaseHealthTracker::RecordLeaseReleased,
           py::arg("peer_id"), py::arg("requeued") = false)
      .def("record_reassignment_completed", &PeerLeaseHealthTracker::RecordReassignmentCompleted)
      .def("set_metadata", &PeerLeaseHealthTracker::SetMetadata)
      .def("forget", &PeerLeaseHealthTracker::Forget)
      .def("is_peer_eligible", &PeerLeaseHealthTracker::IsPeerEligible)
      .def(
          "diagnostics",
          [](const PeerLeaseHealthTracker& t) { return JsonToPython(t.Diagnostics().ToJson()); },
          "The PeerLeaseHealthDiagnostics payload of /omnirelay/control/lease-health as a dict.")
      .def("diagnostics_json",
           [](const PeerLeaseHealthTracker& t) { return t.Diagnostics().ToJson().dump(); });

  py::class_<PeerLease, std::shared_ptr<PeerLease>>(m, "PeerLease")
      .def_property_readonly("peer",
                             [](const PeerLease& l) -> std::shared_ptr<Peer> {
                               // None once the peer left the list (its last shared_ptr is gone;
                               // the lease alone keeps the object until released).
                               return l.peer() ? l.peer()->weak_from_this().lock() : nullptr;
                             })
      .def_property_readonly("peer_id",
                             [](const PeerLease& l) -> std::optional<std::string> {
                               if (!l.peer()) return std::nullopt;
                               return l.peer()->id();
                             })
      .def_property_readonly("probe", &PeerLease::probe)
      .def_property_readonly("active", [](const PeerLease& l) { return static_cast<bool>(l); })
      .def(
          "release",
          [](PeerLease& l, core::StatusCode code, Duration latency) { l.Release(code, latency); },
          py::arg("code") = core::StatusCode::kOk, py::arg("latency") = Duration::zero())
      .def("__enter__", [](std::shared_ptr<PeerLease> l) { return l; })
      .def("__exit__", [](PeerLease& l, py::object type, py::object, py::object) {
        // Leaving the block without an explicit release: OK, or CANCELLED
        // when an exception escaped (the caller's code failed, not the peer:
        // neutral for the breaker). Release explicitly to report a peer error.
        l.Release(type.is_none() ? core::StatusCode::kOk : core::StatusCode::kCancelled,
                  Duration::zero());
        return false;
      });

  py::class_<PeerListCoordinator>(m, "PeerListCoordinator")
      .def(py::init([](std::string chooser, std::shared_ptr<core::Clock> clock,
                       std::shared_ptr<core::MetricsRegistry> metrics,
                       std::shared_ptr<PeerLeaseHealthTracker> tracker, std::string service,
                       std::string procedure, std::string transport, int max_inflight,
                       std::optional<CircuitBreakerOptions> breaker, bool breaker_enabled,
                       std::uint64_t seed, std::string hash_key, std::string hash_header,
                       std::string preferred_zone, std::string preferred_region,
                       std::string preferred_protocol,
                       std::map<std::string, std::string> preferred_labels,
                       std::vector<std::string> preferred_ids, std::string sticky_header,
                       int sticky_occupancy) {
             PeerListCoordinatorOptions o;
             o.chooser = std::move(chooser);
             o.service = std::move(service);
             o.procedure = std::move(procedure);
             o.transport = std::move(transport);
             o.peer_defaults.max_inflight = max_inflight;
             o.peer_defaults.breaker =
                 breaker_enabled ? std::optional(breaker.value_or(CircuitBreakerOptions{}))
                                 : std::nullopt;
             o.chooser_options.seed = seed;
             o.chooser_options.hash_key = std::move(hash_key);
             o.chooser_options.hash_header = std::move(hash_header);
             o.chooser_options.preferred_zone = std::move(preferred_zone);
             o.chooser_options.preferred_region = std::move(preferred_region);
             o.chooser_options.preferred_protocol = std::move(preferred_protocol);
             o.chooser_options.preferred_labels = std::move(preferred_labels);
             o.chooser_options.preferred_ids = std::move(preferred_ids);
             o.chooser_options.sticky_header = std::move(sticky_header);
             o.chooser_options.sticky_occupancy = sticky_occupancy;
             return ValueOrThrow(PeerListCoordinator::Create(
                 std::move(o), std::move(clock), std::move(metrics), std::move(tracker)));
           }),
           py::arg("chooser") = "fewest-pending", py::arg("clock") = nullptr,
           py::arg("metrics") = nullptr, py::arg("tracker") = nullptr, py::arg("service") = "",
           py::arg("procedure") = "", py::arg("transport") = "", py::arg("max_inflight") = 0,
           py::arg("breaker") = py::none(), py::arg("breaker_enabled") = true, py::arg("seed") = 0,
           py::arg("hash_key") = "", py::arg("hash_header") = "session-id",
           py::arg("preferred_zone") = "", py::arg("preferred_region") = "",
           py::arg("preferred_protocol") = "",
           py::arg("preferred_labels") = std::map<std::string, std::string>{},
           py::arg("preferred_ids") = std::vector<std::string>{},
           py::arg("sticky_header") = "session-id", py::arg("sticky_occupancy") = 1)
      .def(
          "add_peer",
          [](PeerListCoordinator& c, PeerDescriptor descriptor, std::optional<int> max_inflight) {
            std::optional<PeerOptions> options;
            if (max_inflight) {
              options = c.options().peer_defaults;
              options->max_inflight = *max_inflight;
            }
            return ValueOrThrow(c.AddPeer(std::move(descriptor), options));
          },
          py::arg("descriptor"), py::arg("max_inflight") = py::none())
      .def("remove_peer",
           [](PeerListCoordinator& c, const std::string& id) { ThrowIfError(c.RemovePeer(id)); })
      .def("replace_peers",
           [](PeerListCoordinator& c, std::vector<PeerDescriptor> descriptors) {
             ThrowIfError(c.ReplacePeers(std::move(descriptors)));
           })
      .def("set_peer_status", [](PeerListCoordinator& c, const std::string& id,
                                 PeerStatus status) { ThrowIfError(c.SetPeerStatus(id, status)); })
      .def("find_peer", &PeerListCoordinator::FindPeer)
      .def(
          "acquire",
          [](PeerListCoordinator& c, std::optional<core::RequestMeta> meta) {
            absl::StatusOr<PeerLease> result;
            {
              py::gil_scoped_release release;  // may wait for a peer or the deadline
              result = c.Acquire(meta.value_or(core::RequestMeta{}));
            }
            ThrowIfError(result.status());
            return std::make_shared<PeerLease>(*std::move(result));
          },
          py::arg("meta") = py::none(),
          "Leases a peer. Raises Unavailable (no peers), ResourceExhausted (no deadline, every "
          "peer refused) or DeadlineExceeded.")
      .def("peer_states",
           [](const PeerListCoordinator& c) {
             py::list out;
             for (const auto& state : c.PeerStates()) out.append(PeerStateToDict(state));
             return out;
           })
      .def_property_readonly("peer_ids",
                             [](const PeerListCoordinator& c) {
                               std::vector<std::string> ids;
                               for (auto* p : c.snapshot()->raw) ids.push_back(p->id());
                               return ids;
                             })
      .def_property_readonly("waiting", &PeerListCoordinator::waiting)
      .def_property_readonly(
          "chooser_name", [](PeerListCoordinator& c) { return std::string(c.chooser().name()); });

  m.def("chooser_names", &ChooserNames);
  m.def("peer_metric_descriptors", [] {
    py::list out;
    for (const auto* d : PeerMetricDescriptors()) {
      py::dict item;
      item["name"] = std::string(d->name);
      item["kind"] = d->kind;
      item["unit"] = std::string(d->unit);
      item["help"] = std::string(d->help);
      out.append(item);
    }
    return out;
  });
}

}  // namespace omnirelay::bindings
