#include "omnirelay/core/latency_histogram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

namespace omnirelay::core {
namespace {

double ExactPercentile(std::vector<double> samples, double q) {
  std::sort(samples.begin(), samples.end());
  const auto rank = std::max<size_t>(1, static_cast<size_t>(std::ceil(q * samples.size())));
  return samples[rank - 1];
}

TEST(LatencyHistogramTest, EmptyIsZero) {
  LatencyHistogram histogram;
  EXPECT_EQ(histogram.Count(), 0u);
  EXPECT_EQ(histogram.Percentile(0.99), 0);
  EXPECT_EQ(histogram.Min(), 0);
}

TEST(LatencyHistogramTest, PercentilesMatchSortedSamplesWithinBucketError) {
  // Log-normal latencies spanning ~3 orders of magnitude, like a real tail.
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> latency_ms(1.0, 1.2);
  std::vector<double> samples;
  LatencyHistogram histogram;  // ms, microsecond ticks
  for (int i = 0; i < 200000; ++i) {
    const double value = latency_ms(rng);
    samples.push_back(value);
    histogram.Record(value);
  }
  for (double q : {0.5, 0.9, 0.95, 0.99, 0.999}) {
    const double exact = ExactPercentile(samples, q);
    const double estimate = histogram.Percentile(q);
    // Half a bucket (1/128) plus one tick of rounding.
    EXPECT_NEAR(estimate, exact, exact / 64 + 0.001) << "q=" << q;
  }
  EXPECT_EQ(histogram.Count(), samples.size());
  EXPECT_NEAR(histogram.Max(), *std::max_element(samples.begin(), samples.end()), 0.001);
  EXPECT_NEAR(histogram.Min(), *std::min_element(samples.begin(), samples.end()), 0.001);
}

TEST(LatencyHistogramTest, SmallValuesAreExact) {
  LatencyHistogram histogram(1.0);  // one tick per unit
  for (int v : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) histogram.Record(v);
  EXPECT_EQ(histogram.Percentile(0.5), 5);
  EXPECT_EQ(histogram.Percentile(0.9), 9);
  EXPECT_EQ(histogram.Percentile(1.0), 10);
  EXPECT_EQ(histogram.Sum(), 55);
}

TEST(LatencyHistogramTest, CountAtOrBelowIsCumulative) {
  LatencyHistogram histogram;
  for (double v : {0.05, 0.5, 0.9, 2.0, 7.0, 40.0}) histogram.Record(v);
  EXPECT_EQ(histogram.CountAtOrBelow(0.1), 1u);
  EXPECT_EQ(histogram.CountAtOrBelow(1.0), 3u);
  EXPECT_EQ(histogram.CountAtOrBelow(10.0), 5u);
  EXPECT_EQ(histogram.CountAtOrBelow(1e9), 6u);
}

TEST(LatencyHistogramTest, HugeAndNegativeValuesDoNotCorrupt) {
  LatencyHistogram histogram;
  histogram.Record(-3);
  histogram.Record(1e15);
  histogram.Record(std::nan(""));
  EXPECT_EQ(histogram.Count(), 3u);
  EXPECT_GT(histogram.Percentile(1.0), 0);
}

TEST(LatencyHistogramTest, ConcurrentRecordsAreAllCounted) {
  LatencyHistogram histogram;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50000; ++i) histogram.Record(i % 100);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(histogram.Count(), 200000u);
  EXPECT_EQ(histogram.CountAtOrBelow(1e6), 200000u);
}

TEST(LatencyHistogramTest, MergeAddsSamples) {
  LatencyHistogram a, b;
  a.Record(1);
  b.Record(100);
  a.Merge(b);
  EXPECT_EQ(a.Count(), 2u);
  EXPECT_NEAR(a.Max(), 100, 1e-9);
  EXPECT_NEAR(a.Min(), 1, 1e-9);
}

}  // namespace
}  // namespace omnirelay::core
