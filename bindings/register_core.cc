// Bindings of the shared core: status codes, RequestMeta, clocks, metrics,
// histogram, logging. Times cross as float seconds since the Unix epoch and
// durations as datetime.timedelta or float seconds (pybind11/chrono).
#include <pybind11/chrono.h>
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <cmath>

#include "bindings/registrations.h"
#include "bindings/status_conversion.h"
#include "omnirelay/core/address.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/latency_histogram.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"

namespace py = pybind11;

namespace omnirelay::bindings {
namespace {

using core::Duration;
using core::TimePoint;

// Epoch seconds as a double carry ~0.2 us of precision today; splitting whole
// seconds from the fraction keeps values such as x.250 s exact both ways.
double ToEpochSeconds(TimePoint time) {
  const auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch());
  const auto whole = std::chrono::duration_cast<std::chrono::seconds>(nanos);
  return static_cast<double>(whole.count()) + static_cast<double>((nanos - whole).count()) / 1e9;
}

TimePoint FromEpochSeconds(double seconds) {
  const double whole = std::floor(seconds);
  const auto fraction = std::chrono::nanoseconds(std::llround((seconds - whole) * 1e9));
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(
      std::chrono::seconds(static_cast<int64_t>(whole)) + fraction));
}

py::dict SummaryToDict(const core::HistogramSummary& summary) {
  py::dict out;
  out["count"] = summary.count;
  out["sum"] = summary.sum;
  out["min"] = summary.min;
  out["max"] = summary.max;
  out["p50"] = summary.p50;
  out["p90"] = summary.p90;
  out["p95"] = summary.p95;
  out["p99"] = summary.p99;
  out["p999"] = summary.p999;
  return out;
}

core::MetricDescriptor Descriptor(const std::string& name, core::MetricKind kind,
                                  const std::string& unit, const std::string& help) {
  // The registry copies the strings into its family on first use.
  return core::MetricDescriptor{name, kind, unit, help};
}

}  // namespace

void RegisterCore(py::module_& m) {
  py::enum_<core::StatusCode>(m, "StatusCode")
      .value("OK", core::StatusCode::kOk)
      .value("CANCELLED", core::StatusCode::kCancelled)
      .value("UNKNOWN", core::StatusCode::kUnknown)
      .value("INVALID_ARGUMENT", core::StatusCode::kInvalidArgument)
      .value("DEADLINE_EXCEEDED", core::StatusCode::kDeadlineExceeded)
      .value("NOT_FOUND", core::StatusCode::kNotFound)
      .value("ALREADY_EXISTS", core::StatusCode::kAlreadyExists)
      .value("PERMISSION_DENIED", core::StatusCode::kPermissionDenied)
      .value("RESOURCE_EXHAUSTED", core::StatusCode::kResourceExhausted)
      .value("FAILED_PRECONDITION", core::StatusCode::kFailedPrecondition)
      .value("ABORTED", core::StatusCode::kAborted)
      .value("OUT_OF_RANGE", core::StatusCode::kOutOfRange)
      .value("UNIMPLEMENTED", core::StatusCode::kUnimplemented)
      .value("INTERNAL", core::StatusCode::kInternal)
      .value("UNAVAILABLE", core::StatusCode::kUnavailable)
      .value("DATA_LOSS", core::StatusCode::kDataLoss)
      .value("UNAUTHENTICATED", core::StatusCode::kUnauthenticated);

  m.def("status_to_http", [](core::StatusCode code) { return core::ToHttpStatus(code); });
  m.def("status_from_http", &core::FromHttpStatus);
  m.def("status_code_name",
        [](core::StatusCode code) { return std::string(core::StatusCodeName(code)); });
  m.def("parse_status_code",
        [](const std::string& name) { return core::ParseStatusCodeName(name); });
  m.def("is_server_failure", &core::IsServerFailure);
  m.def("is_retryable", &core::IsRetryable);
  // Raises the omnirelay.errors exception for (code, message, error_code):
  // lets Python tests prove the C++ -> Python path end to end.
  m.def(
      "raise_status",
      [](core::StatusCode code, const std::string& message, const std::string& error_code) {
        ThrowIfError(core::MakeStatus(code, message, error_code));
      },
      py::arg("code"), py::arg("message"), py::arg("error_code") = "");

  // ------------------------------------------------------------ clocks
  py::class_<core::Clock, std::shared_ptr<core::Clock>>(m, "Clock")
      .def(
          "now", [](const core::Clock& clock) { return ToEpochSeconds(clock.Now()); },
          "Seconds since the Unix epoch (float).");
  py::class_<core::SystemClock, core::Clock, std::shared_ptr<core::SystemClock>>(m, "SystemClock")
      .def(py::init([] { return core::SystemClock::Shared(); }));
  py::class_<core::ManualClock, core::Clock, std::shared_ptr<core::ManualClock>>(m, "ManualClock")
      .def(py::init([](std::optional<double> start) {
             return start ? std::make_shared<core::ManualClock>(FromEpochSeconds(*start))
                          : std::make_shared<core::ManualClock>();
           }),
           py::arg("start") = py::none())
      .def(
          "advance",
          [](core::ManualClock& clock, Duration delta) {
            py::gil_scoped_release release;  // timers may wake C++ waiters
            clock.Advance(delta);
          },
          py::arg("delta"), "Advance by a timedelta or float seconds; runs due timers.")
      .def("set",
           [](core::ManualClock& clock, double epoch_seconds) {
             py::gil_scoped_release release;
             clock.Set(FromEpochSeconds(epoch_seconds));
           })
      .def_property_readonly("pending_timers", &core::ManualClock::pending_timers);

  // ------------------------------------------------------------ RequestMeta
  py::class_<core::RequestMeta>(m, "RequestMeta")
      .def(py::init<>())
      .def_readwrite("service", &core::RequestMeta::service)
      .def_readwrite("procedure", &core::RequestMeta::procedure)
      .def_readwrite("caller", &core::RequestMeta::caller)
      .def_readwrite("encoding", &core::RequestMeta::encoding)
      .def_readwrite("transport", &core::RequestMeta::transport)
      .def_readwrite("shard_key", &core::RequestMeta::shard_key)
      .def_readwrite("routing_key", &core::RequestMeta::routing_key)
      .def_readwrite("routing_delegate", &core::RequestMeta::routing_delegate)
      .def_readwrite("time_to_live", &core::RequestMeta::time_to_live)
      .def_property(
          "deadline",
          [](const core::RequestMeta& meta) -> std::optional<double> {
            if (!meta.deadline) return std::nullopt;
            return ToEpochSeconds(*meta.deadline);
          },
          [](core::RequestMeta& meta, std::optional<double> seconds) {
            meta.deadline = seconds ? std::optional(FromEpochSeconds(*seconds)) : std::nullopt;
          })
      .def("set_header", [](core::RequestMeta& meta, const std::string& name,
                            std::string value) { meta.headers.Set(name, std::move(value)); })
      .def(
          "header",
          [](const core::RequestMeta& meta, const std::string& name) -> std::optional<std::string> {
            auto value = meta.headers.Get(name);
            if (!value) return std::nullopt;
            return std::string(*value);
          })
      .def_property_readonly("headers",
                             [](const core::RequestMeta& meta) { return meta.headers.entries(); })
      .def(
          "effective_deadline",
          [](const core::RequestMeta& meta, double now) -> std::optional<double> {
            auto deadline = meta.EffectiveDeadline(FromEpochSeconds(now));
            if (!deadline) return std::nullopt;
            return ToEpochSeconds(*deadline);
          },
          py::arg("now"), "The earlier of deadline and now+time_to_live (epoch seconds), or None.");

  m.def("parse_timestamp", [](const std::string& text) -> double {
    auto parsed = core::ParseTimestamp(text);
    if (!parsed) {
      ThrowIfError(absl::InvalidArgumentError("not an ISO-8601 timestamp: " + text));
    }
    return ToEpochSeconds(*parsed);
  });
  m.def("format_timestamp",
        [](double seconds) { return core::FormatTimestamp(FromEpochSeconds(seconds)); });
  m.def(
      "parse_host_port",
      [](const std::string& text) {
        auto parsed = core::ParseHostPort(text);
        if (!parsed.ok()) ThrowIfError(parsed.status());
        return py::make_tuple(parsed->scheme, parsed->host, parsed->port, parsed->path);
      },
      "The one address parser: '[scheme://]host:port[/path]' -> (scheme, host, port, path).");
  m.def("parse_duration", [](const std::string& text) -> Duration {
    auto parsed = core::ParseDuration(text);
    if (!parsed) ThrowIfError(absl::InvalidArgumentError("not a duration: " + text));
    return *parsed;
  });

  // ------------------------------------------------------------ metrics
  py::enum_<core::MetricKind>(m, "MetricKind")
      .value("COUNTER", core::MetricKind::kCounter)
      .value("UP_DOWN_COUNTER", core::MetricKind::kUpDownCounter)
      .value("GAUGE", core::MetricKind::kGauge)
      .value("HISTOGRAM", core::MetricKind::kHistogram);

  py::class_<core::MetricsRegistry, std::shared_ptr<core::MetricsRegistry>>(m, "MetricsRegistry")
      .def(py::init<>())
      .def_static("default", &core::MetricsRegistry::Default)
      .def("render_prometheus", &core::MetricsRegistry::RenderPrometheus,
           py::call_guard<py::gil_scoped_release>())
      .def("snapshot",
           [](const core::MetricsRegistry& registry) {
             std::vector<core::MetricPoint> points;
             {
               py::gil_scoped_release release;
               points = registry.Snapshot();
             }
             py::list out;
             for (const auto& point : points) {
               py::dict item;
               item["name"] = point.name;
               item["kind"] = std::string(core::MetricKindName(point.kind));
               item["unit"] = point.unit;
               item["tags"] = point.tags;
               item["value"] = point.value;
               if (point.kind == core::MetricKind::kHistogram) {
                 item["histogram"] = SummaryToDict(point.histogram);
               }
               out.append(item);
             }
             return out;
           })
      .def("total", &core::MetricsRegistry::Total, py::arg("name"), py::arg("tags") = core::Tags{})
      .def(
          "add_counter",
          [](core::MetricsRegistry& registry, const std::string& name, double amount,
             const core::Tags& tags, const std::string& help) {
            registry.GetCounter(Descriptor(name, core::MetricKind::kCounter, "1", help), tags)
                .Add(amount);
          },
          py::arg("name"), py::arg("amount") = 1.0, py::arg("tags") = core::Tags{},
          py::arg("help") = "")
      .def(
          "set_gauge",
          [](core::MetricsRegistry& registry, const std::string& name, double value,
             const core::Tags& tags, const std::string& help) {
            registry.GetGauge(Descriptor(name, core::MetricKind::kGauge, "1", help), tags)
                .Set(value);
          },
          py::arg("name"), py::arg("value"), py::arg("tags") = core::Tags{}, py::arg("help") = "")
      .def(
          "record",
          [](core::MetricsRegistry& registry, const std::string& name, double value,
             const core::Tags& tags, const std::string& unit, const std::string& help) {
            registry.GetHistogram(Descriptor(name, core::MetricKind::kHistogram, unit, help), tags)
                .Record(value);
          },
          py::arg("name"), py::arg("value"), py::arg("tags") = core::Tags{}, py::arg("unit") = "ms",
          py::arg("help") = "")
      .def_static("prometheus_name",
                  [](const std::string& dotted, core::MetricKind kind, const std::string& unit) {
                    return core::MetricsRegistry::PrometheusName(dotted, kind, unit);
                  });

  py::class_<core::LatencyHistogram, std::shared_ptr<core::LatencyHistogram>>(m, "LatencyHistogram")
      .def(py::init<double>(), py::arg("ticks_per_unit") = 1000.0)
      .def("record", &core::LatencyHistogram::Record)
      .def("percentile", &core::LatencyHistogram::Percentile)
      .def_property_readonly("count", &core::LatencyHistogram::Count)
      .def("summary", [](const core::LatencyHistogram& h) { return SummaryToDict(h.Summarize()); });

  // ------------------------------------------------------------ logging
  m.def("set_log_level", [](const std::string& level) {
    auto parsed = core::ParseLogLevel(level);
    if (!parsed) ThrowIfError(absl::InvalidArgumentError("unknown log level: " + level));
    core::SetLogLevel(*parsed);
  });
  m.def("get_log_level", [] { return std::string(core::LogLevelName(core::GetLogLevel())); });
  m.def("set_log_file", &core::SetLogFile);
  m.def(
      "log",
      [](const std::string& level, const std::string& event, py::dict fields) {
        auto parsed = core::ParseLogLevel(level);
        if (!parsed) ThrowIfError(absl::InvalidArgumentError("unknown log level: " + level));
        nlohmann::json json_fields = nlohmann::json::object();
        for (auto item : fields) {
          json_fields[py::str(item.first).cast<std::string>()] =
              py::str(item.second).cast<std::string>();
        }
        core::Log(*parsed, event, std::move(json_fields));
      },
      py::arg("level"), py::arg("event"), py::arg("fields") = py::dict());
}

}  // namespace omnirelay::bindings
