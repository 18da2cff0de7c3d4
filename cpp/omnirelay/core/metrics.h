#pragma once
// The metrics registry every subsystem records into.
//
// Names follow the seeds' OpenTelemetry style (`omnirelay.peer.pool_exhausted`)
// and are described once, in a per-subsystem table of MetricDescriptor. The
// registry renders them as Prometheus text exposition through prometheus-cpp:
//   dots -> underscores, a unit suffix in Prometheus base units (ms, us and s
//   -> `_seconds`, histogram values rescaled on render; By -> `_bytes`), and
//   `_total` for counters (what `promtool check metrics` asks for); tag keys likewise
//   (`peer.rejection_reason` -> `peer_rejection_reason`). PrometheusName() is
//   the one place this mapping lives.
//
// Kinds: Counter (monotonic), UpDownCounter (in-flight style, may go down),
// Gauge (set to a value), Histogram (LatencyHistogram: precise percentiles
// for snapshots, coarse cumulative buckets for Prometheus).
//
// Hot paths: Get*() takes the registry mutex and finds or creates the series;
// callers on hot paths look a series up once and keep the reference, which
// stays valid for the registry's lifetime. Recording on a series is lock-free.
//
// Observable series: RegisterObservable() attaches a callback that the
// registry calls at scrape time (RenderPrometheus, Snapshot, Total) instead of
// the owner recording on every event. It suits values the owner already keeps
// in its own atomics (a peer's in-flight count, its success count): the hot
// path then pays nothing for the metric. A series (name + tags) may have
// several observers; its value is the sum of what they report, and for
// counters and up-down counters an observer's last value is folded into the
// series when its handle is destroyed, so the series behaves exactly like a
// push counter that every observer added into (it never goes back down when
// an object goes away, and keeps accumulating if one with the same tags comes
// back). Gauges drop an unregistered observer's contribution. Like Get*
// series, an observable series is never removed from the exposition; if a
// push series has the same name and tags, Prometheus shows their sum.
// Callbacks run under the registry mutex: they must be cheap, thread-safe and
// must not call back into the registry.
//
// Snapshot() returns plain values (dotted names, original tag keys) for tests
// and Python assertions.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "omnirelay/core/latency_histogram.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
struct MetricFamily;
}  // namespace prometheus

namespace omnirelay::core {

enum class MetricKind { kCounter, kUpDownCounter, kGauge, kHistogram };
std::string_view MetricKindName(MetricKind kind);

struct MetricDescriptor {
  std::string_view name;  // dotted, e.g. "omnirelay.peer.pool_exhausted"
  MetricKind kind;
  std::string_view unit;  // UCUM-ish as in OpenTelemetry: "1", "ms", "s", "By", "{request}"
  std::string_view help;
  // Prometheus bucket upper bounds for histograms (in `unit`); empty = default latency buckets.
  std::vector<double> buckets = {};
};

// Tag keys keep their dotted spelling; a std::map keeps series identity order-free.
using Tags = std::map<std::string, std::string>;

// The series handles. Thin wrappers so callers never see prometheus-cpp.
class Counter {
 public:
  explicit Counter(prometheus::Counter* impl) : impl_(impl) {}
  void Add(double amount = 1);
  double Value() const;

 private:
  prometheus::Counter* impl_;
};

class UpDownCounter {
 public:
  explicit UpDownCounter(prometheus::Gauge* impl) : impl_(impl) {}
  void Add(double delta);
  double Value() const;

 private:
  prometheus::Gauge* impl_;
};

class Gauge {
 public:
  explicit Gauge(prometheus::Gauge* impl) : impl_(impl) {}
  void Set(double value);
  double Value() const;

 private:
  prometheus::Gauge* impl_;
};

class Histogram {
 public:
  explicit Histogram(double ticks_per_unit) : data_(ticks_per_unit) {}
  void Record(double value) { data_.Record(value); }
  const LatencyHistogram& data() const { return data_; }

 private:
  LatencyHistogram data_;
};

class MetricsRegistry;

// Keeps an observable series' callback registered; destroying (or resetting)
// it unregisters the callback, after which the registry never calls it again.
// Move-only. Must not outlive its registry.
class ObservableHandle {
 public:
  ObservableHandle() = default;
  ObservableHandle(ObservableHandle&& other) noexcept { *this = std::move(other); }
  ObservableHandle& operator=(ObservableHandle&& other) noexcept;
  ObservableHandle(const ObservableHandle&) = delete;
  ObservableHandle& operator=(const ObservableHandle&) = delete;
  ~ObservableHandle() { Reset(); }

  void Reset();  // unregisters now (thread-safe; waits out a running scrape)
  explicit operator bool() const { return registry_ != nullptr; }

 private:
  friend class MetricsRegistry;
  ObservableHandle(MetricsRegistry* registry, std::uint64_t id) : registry_(registry), id_(id) {}
  MetricsRegistry* registry_ = nullptr;
  std::uint64_t id_ = 0;
};

struct MetricPoint {
  std::string name;  // dotted
  MetricKind kind;
  std::string unit;
  Tags tags;
  double value = 0;            // counters and gauges
  HistogramSummary histogram;  // histograms
};

class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Finds or creates the series. The descriptor's kind must match the kind
  // the name was first registered with (a mismatch is a programming error and
  // aborts in debug builds; release builds return the series of the first kind's family).
  Counter& GetCounter(const MetricDescriptor& descriptor, const Tags& tags = {});
  UpDownCounter& GetUpDownCounter(const MetricDescriptor& descriptor, const Tags& tags = {});
  Gauge& GetGauge(const MetricDescriptor& descriptor, const Tags& tags = {});
  Histogram& GetHistogram(const MetricDescriptor& descriptor, const Tags& tags = {});

  // Registers `observe` as (part of) the series `descriptor` + `tags`; see
  // "Observable series" above. The kind must be kCounter, kUpDownCounter or
  // kGauge (a histogram is a programming error: aborts in debug builds,
  // returns an empty handle in release builds). A counter's callback must
  // never decrease.
  [[nodiscard]] ObservableHandle RegisterObservable(const MetricDescriptor& descriptor,
                                                    const Tags& tags,
                                                    std::function<double()> observe);
  // The histogram counterpart: at scrape time `collect` adds the observer's
  // samples into the histogram it is given (LatencyHistogram::AddRaw /
  // AddTotals / Merge; ticks of 1/1000 of the unit, like GetHistogram's).
  // The series is the sum of a push series with the same tags (if any), the
  // retained samples of unregistered observers and every live observer, so it
  // behaves exactly like a push histogram every observer recorded into. The
  // descriptor's kind must be kHistogram.
  [[nodiscard]] ObservableHandle RegisterObservableHistogram(
      const MetricDescriptor& descriptor, const Tags& tags,
      std::function<void(LatencyHistogram&)> collect);

  // Prometheus text exposition format 0.0.4 of every series.
  std::string RenderPrometheus() const;

  std::vector<MetricPoint> Snapshot() const;
  // Sum of a counter/gauge's value over every series whose tags include
  // `tag_filter` (0 when the metric does not exist). Convenient for tests.
  double Total(std::string_view name, const Tags& tag_filter = {}) const;

  // "omnirelay.peer.pool_exhausted" + counter -> "omnirelay_peer_pool_exhausted_total".
  static std::string PrometheusName(std::string_view dotted, MetricKind kind,
                                    std::string_view unit);
  static std::string PrometheusLabel(std::string_view dotted_tag);

  // Process-wide default registry (what `omnirelay serve` exposes on /metrics).
  static std::shared_ptr<MetricsRegistry> Default();

 private:
  friend class ObservableHandle;
  struct Family;
  struct ObservableSeries;
  struct ObservableHistogramSeries;
  Family& FamilyFor(const MetricDescriptor& descriptor);
  std::vector<prometheus::MetricFamily> CollectHistogramsLocked() const;
  void AddObservablesLocked(std::vector<prometheus::MetricFamily>& families) const;
  void Unregister(std::uint64_t id);

  mutable std::mutex mu_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families_;
  std::uint64_t next_observer_id_ = 1;
  // Observer id -> its series, for Unregister.
  std::map<std::uint64_t, ObservableSeries*> observers_;
  std::map<std::uint64_t, ObservableHistogramSeries*> histogram_observers_;
};

// Default latency buckets (ms) for Prometheus exposition of histograms.
const std::vector<double>& DefaultLatencyBucketsMs();

}  // namespace omnirelay::core
