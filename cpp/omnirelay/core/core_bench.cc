// Costs of the primitives every request pays: a counter add, a histogram
// record, an effective-deadline computation.
#include <benchmark/benchmark.h>

#include "omnirelay/core/metrics.h"
#include "omnirelay/core/request_meta.h"

namespace omnirelay::core {
namespace {

const MetricDescriptor kRequests{"omnirelay.bench.requests", MetricKind::kCounter, "1", "bench"};
const MetricDescriptor kLatency{"omnirelay.bench.duration", MetricKind::kHistogram, "ms", "bench"};

void BM_CounterAdd(benchmark::State& state) {
  static MetricsRegistry registry;
  Counter& counter = registry.GetCounter(kRequests);
  for (auto _ : state) counter.Add();
}
BENCHMARK(BM_CounterAdd)->Threads(1)->Threads(2);

void BM_HistogramRecord(benchmark::State& state) {
  static MetricsRegistry registry;
  Histogram& histogram = registry.GetHistogram(kLatency);
  double value = 0.1;
  for (auto _ : state) {
    histogram.Record(value);
    value = value > 1000 ? 0.1 : value * 1.01;
  }
}
BENCHMARK(BM_HistogramRecord)->Threads(1)->Threads(2);

void BM_EffectiveDeadline(benchmark::State& state) {
  RequestMeta meta;
  meta.time_to_live = std::chrono::milliseconds(50);
  const TimePoint now = std::chrono::system_clock::now();
  meta.deadline = now + std::chrono::seconds(1);
  for (auto _ : state) benchmark::DoNotOptimize(meta.EffectiveDeadline(now));
}
BENCHMARK(BM_EffectiveDeadline);

}  // namespace
}  // namespace omnirelay::core
