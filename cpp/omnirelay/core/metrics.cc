#include "omnirelay/core/metrics.h"

#include <algorithm>
#include <cassert>
#include <cctype>
#include <limits>
#include <sstream>
#include <tuple>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace omnirelay::core {

std::string_view MetricKindName(MetricKind kind) {
  switch (kind) {
    case MetricKind::kCounter:
      return "counter";
    case MetricKind::kUpDownCounter:
      return "updowncounter";
    case MetricKind::kGauge:
      return "gauge";
    case MetricKind::kHistogram:
      return "histogram";
  }
  return "unknown";
}

void Counter::Add(double amount) { impl_->Increment(amount); }
double Counter::Value() const { return impl_->Value(); }
void UpDownCounter::Add(double delta) { impl_->Increment(delta); }
double UpDownCounter::Value() const { return impl_->Value(); }
void Gauge::Set(double value) { impl_->Set(value); }
double Gauge::Value() const { return impl_->Value(); }

const std::vector<double>& DefaultLatencyBucketsMs() {
  static const std::vector<double> buckets = {0.1, 0.25, 0.5, 1,   2.5,  5,    10,   25,
                                              50,  100,  250, 500, 1000, 2500, 5000, 10000};
  return buckets;
}

namespace {

prometheus::Labels ToLabels(const Tags& tags) {
  prometheus::Labels labels;
  for (const auto& [key, value] : tags)
    labels.emplace(MetricsRegistry::PrometheusLabel(key), value);
  return labels;
}

// Prometheus wants base units (promtool: 'use base unit "seconds"'): time
// is exposed in seconds whatever unit it is recorded in, scaled on render.
std::string_view UnitSuffix(std::string_view unit) {
  if (unit == "ms" || unit == "s" || unit == "us") return "_seconds";
  if (unit == "By") return "_bytes";
  return "";  // "1", "{request}" and other annotations add no suffix (OTel->Prometheus rules)
}

// Recorded units per exposed base unit (a divisor: 555.5 ms / 1000 prints as
// 0.5555, where 555.5 * 1e-3 would not).
double UnitScale(std::string_view unit) {
  if (unit == "ms") return 1e3;
  if (unit == "us") return 1e6;
  return 1;
}

}  // namespace

// A series fed by callbacks (RegisterObservable). Value = retained (final
// values of unregistered counter/up-down observers) + every live observer.
struct MetricsRegistry::ObservableSeries {
  MetricKind kind;
  double retained = 0;
  std::map<std::uint64_t, std::function<double()>> observers;

  double Value() const {
    double value = retained;
    for (const auto& [id, observe] : observers) value += observe();
    return value;
  }
};

// A histogram fed by callbacks (RegisterObservableHistogram): retained
// samples of unregistered observers plus every live observer's.
struct MetricsRegistry::ObservableHistogramSeries {
  LatencyHistogram retained{1000.0};
  std::map<std::uint64_t, std::function<void(LatencyHistogram&)>> observers;

  void CollectInto(LatencyHistogram& out) const {
    out.Merge(retained);
    for (const auto& [id, collect] : observers) collect(out);
  }
};

// One metric name: its descriptor, its prometheus-cpp family (counters and
// gauges) or our own histogram series, and every series created so far.
struct MetricsRegistry::Family {
  std::string name;
  MetricKind kind;
  std::string unit;
  std::string help;
  std::vector<double> buckets;
  prometheus::Family<prometheus::Counter>* counters = nullptr;
  prometheus::Family<prometheus::Gauge>* gauges = nullptr;
  // Series handles are heap-allocated so references stay valid as maps grow.
  std::map<Tags, std::unique_ptr<Counter>> counter_series;
  std::map<Tags, std::unique_ptr<UpDownCounter>> updown_series;
  std::map<Tags, std::unique_ptr<Gauge>> gauge_series;
  std::map<Tags, std::unique_ptr<Histogram>> histogram_series;
  std::map<Tags, std::unique_ptr<ObservableSeries>> observable_series;
  std::map<Tags, std::unique_ptr<ObservableHistogramSeries>> observable_histograms;

  // Every histogram series (push and observable, summed per tag set) as one
  // histogram each: a push series alone is used as is; observable ones are
  // merged into a scratch histogram (owned by `scratch`). Caller holds the
  // registry mutex.
  std::map<Tags, const LatencyHistogram*> MergedHistograms(
      std::vector<std::unique_ptr<LatencyHistogram>>& scratch) const {
    std::map<Tags, const LatencyHistogram*> out;
    for (const auto& [tags, series] : histogram_series) out[tags] = &series->data();
    for (const auto& [tags, series] : observable_histograms) {
      scratch.push_back(std::make_unique<LatencyHistogram>(1000.0));
      LatencyHistogram& merged = *scratch.back();
      auto push = out.find(tags);
      if (push != out.end()) merged.Merge(*push->second);
      series->CollectInto(merged);
      out[tags] = &merged;
    }
    return out;
  }
};

ObservableHandle& ObservableHandle::operator=(ObservableHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    registry_ = other.registry_;
    id_ = other.id_;
    other.registry_ = nullptr;
    other.id_ = 0;
  }
  return *this;
}

void ObservableHandle::Reset() {
  if (registry_ == nullptr) return;
  registry_->Unregister(id_);
  registry_ = nullptr;
  id_ = 0;
}

// Renders our histograms as prometheus-cpp families so one serializer
// renders everything. Caller holds mu_.
std::vector<prometheus::MetricFamily> MetricsRegistry::CollectHistogramsLocked() const {
  std::vector<prometheus::MetricFamily> out;
  for (const auto& [name, family] : families_) {
    if (family->kind != MetricKind::kHistogram) continue;
    prometheus::MetricFamily rendered;
    rendered.name = PrometheusName(name, family->kind, family->unit);
    rendered.help = family->help;
    rendered.type = prometheus::MetricType::Histogram;
    const auto& bounds = family->buckets.empty() ? DefaultLatencyBucketsMs() : family->buckets;
    std::vector<std::unique_ptr<LatencyHistogram>> scratch;
    for (const auto& [tags, merged] : family->MergedHistograms(scratch)) {
      prometheus::ClientMetric metric;
      for (const auto& [key, value] : tags) metric.label.push_back({PrometheusLabel(key), value});
      const LatencyHistogram& data = *merged;
      const double per_base_unit = UnitScale(family->unit);
      metric.histogram.sample_count = data.Count();
      metric.histogram.sample_sum = data.Sum() / per_base_unit;
      for (double bound : bounds) {
        metric.histogram.bucket.push_back({data.CountAtOrBelow(bound), bound / per_base_unit});
      }
      metric.histogram.bucket.push_back({data.Count(), std::numeric_limits<double>::infinity()});
      rendered.metric.push_back(std::move(metric));
    }
    out.push_back(std::move(rendered));
  }
  return out;
}

MetricsRegistry::MetricsRegistry() : registry_(std::make_shared<prometheus::Registry>()) {}
MetricsRegistry::~MetricsRegistry() = default;

std::shared_ptr<MetricsRegistry> MetricsRegistry::Default() {
  static auto* registry = new std::shared_ptr<MetricsRegistry>(std::make_shared<MetricsRegistry>());
  return *registry;
}

std::string MetricsRegistry::PrometheusLabel(std::string_view dotted_tag) {
  std::string out(dotted_tag);
  for (char& c : out) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) c = '_';
  }
  return out;
}

std::string MetricsRegistry::PrometheusName(std::string_view dotted, MetricKind kind,
                                            std::string_view unit) {
  std::string out = PrometheusLabel(dotted);
  const std::string_view suffix = UnitSuffix(unit);
  if (!suffix.empty() && !out.ends_with(suffix)) out += suffix;
  if (kind == MetricKind::kCounter) out += "_total";
  return out;
}

MetricsRegistry::Family& MetricsRegistry::FamilyFor(const MetricDescriptor& descriptor) {
  auto it = families_.find(descriptor.name);
  if (it != families_.end()) {
    assert(it->second->kind == descriptor.kind && "metric registered with two kinds");
    return *it->second;
  }
  // Only histograms are rescaled to base units on render; a counter or gauge
  // must be recorded in its base unit already.
  assert((descriptor.kind == MetricKind::kHistogram || UnitScale(descriptor.unit) == 1) &&
         "non-histogram metrics must use base units (s, By)");
  auto family = std::make_unique<Family>();
  family->name = std::string(descriptor.name);
  family->kind = descriptor.kind;
  family->unit = std::string(descriptor.unit);
  family->help = std::string(descriptor.help);
  family->buckets = descriptor.buckets;
  const std::string prom_name = PrometheusName(descriptor.name, descriptor.kind, descriptor.unit);
  switch (descriptor.kind) {
    case MetricKind::kCounter:
      family->counters = &prometheus::BuildCounter()
                              .Name(prom_name)
                              .Help(std::string(descriptor.help))
                              .Register(*registry_);
      break;
    case MetricKind::kUpDownCounter:
    case MetricKind::kGauge:
      family->gauges = &prometheus::BuildGauge()
                            .Name(prom_name)
                            .Help(std::string(descriptor.help))
                            .Register(*registry_);
      break;
    case MetricKind::kHistogram:
      break;
  }
  auto& ref = *family;
  families_.emplace(family->name, std::move(family));
  return ref;
}

Counter& MetricsRegistry::GetCounter(const MetricDescriptor& descriptor, const Tags& tags) {
  std::lock_guard lock(mu_);
  Family& family = FamilyFor(descriptor);
  auto& slot = family.counter_series[tags];
  if (!slot) slot = std::make_unique<Counter>(&family.counters->Add(ToLabels(tags)));
  return *slot;
}

UpDownCounter& MetricsRegistry::GetUpDownCounter(const MetricDescriptor& descriptor,
                                                 const Tags& tags) {
  std::lock_guard lock(mu_);
  Family& family = FamilyFor(descriptor);
  auto& slot = family.updown_series[tags];
  if (!slot) slot = std::make_unique<UpDownCounter>(&family.gauges->Add(ToLabels(tags)));
  return *slot;
}

Gauge& MetricsRegistry::GetGauge(const MetricDescriptor& descriptor, const Tags& tags) {
  std::lock_guard lock(mu_);
  Family& family = FamilyFor(descriptor);
  auto& slot = family.gauge_series[tags];
  if (!slot) slot = std::make_unique<Gauge>(&family.gauges->Add(ToLabels(tags)));
  return *slot;
}

Histogram& MetricsRegistry::GetHistogram(const MetricDescriptor& descriptor, const Tags& tags) {
  std::lock_guard lock(mu_);
  Family& family = FamilyFor(descriptor);
  auto& slot = family.histogram_series[tags];
  if (!slot) {
    // Resolve to 1/1000 of the unit (microseconds for ms histograms).
    slot = std::make_unique<Histogram>(1000.0);
  }
  return *slot;
}

ObservableHandle MetricsRegistry::RegisterObservable(const MetricDescriptor& descriptor,
                                                     const Tags& tags,
                                                     std::function<double()> observe) {
  assert(descriptor.kind != MetricKind::kHistogram && "histograms cannot be observable");
  if (descriptor.kind == MetricKind::kHistogram || !observe) return {};
  std::lock_guard lock(mu_);
  Family& family = FamilyFor(descriptor);
  auto& slot = family.observable_series[tags];
  if (!slot) {
    slot = std::make_unique<ObservableSeries>();
    slot->kind = family.kind;
  }
  const std::uint64_t id = next_observer_id_++;
  slot->observers.emplace(id, std::move(observe));
  observers_.emplace(id, slot.get());
  return ObservableHandle(this, id);
}

ObservableHandle MetricsRegistry::RegisterObservableHistogram(
    const MetricDescriptor& descriptor, const Tags& tags,
    std::function<void(LatencyHistogram&)> collect) {
  assert(descriptor.kind == MetricKind::kHistogram && "only histograms take a histogram observer");
  if (descriptor.kind != MetricKind::kHistogram || !collect) return {};
  std::lock_guard lock(mu_);
  Family& family = FamilyFor(descriptor);
  auto& slot = family.observable_histograms[tags];
  if (!slot) slot = std::make_unique<ObservableHistogramSeries>();
  const std::uint64_t id = next_observer_id_++;
  slot->observers.emplace(id, std::move(collect));
  histogram_observers_.emplace(id, slot.get());
  return ObservableHandle(this, id);
}

void MetricsRegistry::Unregister(std::uint64_t id) {
  std::function<double()> observe;  // destroyed after the lock is dropped
  std::function<void(LatencyHistogram&)> collect;
  std::lock_guard lock(mu_);
  if (auto histogram = histogram_observers_.find(id); histogram != histogram_observers_.end()) {
    ObservableHistogramSeries* series = histogram->second;
    histogram_observers_.erase(histogram);
    auto observer = series->observers.find(id);
    if (observer == series->observers.end()) return;
    // Keep what the observer contributed, as a push histogram would.
    observer->second(series->retained);
    collect = std::move(observer->second);
    series->observers.erase(observer);
    return;
  }
  auto it = observers_.find(id);
  if (it == observers_.end()) return;
  ObservableSeries* series = it->second;
  observers_.erase(it);
  auto observer = series->observers.find(id);
  if (observer == series->observers.end()) return;
  // Counters and up-down counters keep what the observer contributed.
  if (series->kind != MetricKind::kGauge) series->retained += observer->second();
  observe = std::move(observer->second);
  series->observers.erase(observer);
}

// Adds observable series to the collected families: into the family of the
// same name when prometheus-cpp has one (summing a push series with the same
// labels), else into a new family. Caller holds mu_.
void MetricsRegistry::AddObservablesLocked(std::vector<prometheus::MetricFamily>& families) const {
  for (const auto& [name, family] : families_) {
    if (family->observable_series.empty()) continue;
    const std::string prom_name = PrometheusName(name, family->kind, family->unit);
    auto it = std::find_if(families.begin(), families.end(),
                           [&](const auto& f) { return f.name == prom_name; });
    if (it == families.end()) {
      prometheus::MetricFamily rendered;
      rendered.name = prom_name;
      rendered.help = family->help;
      rendered.type = family->kind == MetricKind::kCounter ? prometheus::MetricType::Counter
                                                           : prometheus::MetricType::Gauge;
      families.push_back(std::move(rendered));
      it = families.end() - 1;
    }
    auto& metrics = it->metric;
    for (const auto& [tags, series] : family->observable_series) {
      std::vector<prometheus::ClientMetric::Label> labels;
      for (const auto& [key, value] : ToLabels(tags)) labels.push_back({key, value});
      const double value = series->Value();
      auto same = std::find_if(metrics.begin(), metrics.end(),
                               [&](const auto& m) { return m.label == labels; });
      if (same == metrics.end()) {
        metrics.emplace_back();
        same = metrics.end() - 1;
        same->label = std::move(labels);
      }
      if (family->kind == MetricKind::kCounter) {
        same->counter.value += value;
      } else {
        same->gauge.value += value;
      }
    }
    // prometheus-cpp orders a family's series by label set; keep that order.
    std::sort(metrics.begin(), metrics.end(), [](const auto& a, const auto& b) {
      return std::lexicographical_compare(a.label.begin(), a.label.end(), b.label.begin(),
                                          b.label.end(), [](const auto& x, const auto& y) {
                                            return std::tie(x.name, x.value) <
                                                   std::tie(y.name, y.value);
                                          });
    });
  }
}

std::string MetricsRegistry::RenderPrometheus() const {
  std::lock_guard lock(mu_);
  auto families = registry_->Collect();
  AddObservablesLocked(families);
  auto histograms = CollectHistogramsLocked();
  families.insert(families.end(), std::make_move_iterator(histograms.begin()),
                  std::make_move_iterator(histograms.end()));
  std::sort(families.begin(), families.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

std::vector<MetricPoint> MetricsRegistry::Snapshot() const {
  std::lock_guard lock(mu_);
  std::vector<MetricPoint> points;
  // Not a structured binding: clang 14 (the fuzz build) cannot capture one.
  for (const auto& entry : families_) {
    const std::string& name = entry.first;
    const auto& family = entry.second;
    auto point_for = [&](const Tags& tags) {
      MetricPoint point;
      point.name = name;
      point.kind = family->kind;
      point.unit = family->unit;
      point.tags = tags;
      return point;
    };
    for (const auto& [tags, series] : family->counter_series) {
      points.push_back(point_for(tags));
      points.back().value = series->Value();
    }
    for (const auto& [tags, series] : family->updown_series) {
      points.push_back(point_for(tags));
      points.back().value = series->Value();
    }
    for (const auto& [tags, series] : family->gauge_series) {
      points.push_back(point_for(tags));
      points.back().value = series->Value();
    }
    for (const auto& [tags, series] : family->observable_series) {
      points.push_back(point_for(tags));
      points.back().value = series->Value();
    }
    std::vector<std::unique_ptr<LatencyHistogram>> scratch;
    for (const auto& [tags, merged] : family->MergedHistograms(scratch)) {
      points.push_back(point_for(tags));
      points.back().histogram = merged->Summarize();
      points.back().value = static_cast<double>(points.back().histogram.count);
    }
  }
  return points;
}

double MetricsRegistry::Total(std::string_view name, const Tags& tag_filter) const {
  double total = 0;
  for (const auto& point : Snapshot()) {
    if (point.name != name) continue;
    bool matches = true;
    for (const auto& [key, value] : tag_filter) {
      auto it = point.tags.find(key);
      if (it == point.tags.end() || it->second != value) {
        matches = false;
        break;
      }
    }
    if (matches) total += point.value;
  }
  return total;
}

}  // namespace omnirelay::core
