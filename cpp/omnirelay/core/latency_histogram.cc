#include "omnirelay/core/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace omnirelay::core {

LatencyHistogram::LatencyHistogram(double ticks_per_unit) : ticks_per_unit_(ticks_per_unit) {}

size_t LatencyHistogram::BucketIndex(std::uint64_t ticks) {
  if (ticks < kSubBuckets) return static_cast<size_t>(ticks);
  const int exponent = std::min(63 - std::countl_zero(ticks), kMaxExponent);
  if (exponent == kMaxExponent && ticks >= (std::uint64_t{1} << (kMaxExponent + 1))) {
    return kBucketCount - 1;  // saturate
  }
  const std::uint64_t sub = (ticks >> (exponent - kSubBucketBits)) & (kSubBuckets - 1);
  return static_cast<size_t>((exponent - kSubBucketBits + 1) * kSubBuckets + sub);
}

std::uint64_t LatencyHistogram::BucketLowerTicks(size_t index) {
  if (index < kSubBuckets) return index;
  const size_t group = index / kSubBuckets;  // >= 1
  const std::uint64_t sub = index % kSubBuckets;
  const int exponent = static_cast<int>(group) + kSubBucketBits - 1;
  return (std::uint64_t{1} << exponent) + (sub << (exponent - kSubBucketBits));
}

std::uint64_t LatencyHistogram::BucketUpperTicks(size_t index) {
  if (index < kSubBuckets) return index + 1;
  const size_t group = index / kSubBuckets;
  const int exponent = static_cast<int>(group) + kSubBucketBits - 1;
  return BucketLowerTicks(index) + (std::uint64_t{1} << (exponent - kSubBucketBits));
}

std::uint64_t LatencyHistogram::ToTicks(double value) const {
  if (!(value >= 0)) value = 0;  // negative or NaN: clamp, never corrupt an index
  const double scaled = value * ticks_per_unit_;
  return scaled >= 1.8e19 ? UINT64_MAX / 2 : static_cast<std::uint64_t>(std::llround(scaled));
}

void LatencyHistogram::AddRaw(size_t bucket, std::uint64_t samples) {
  if (bucket < kBucketCount && samples != 0) {
    buckets_[bucket].fetch_add(samples, std::memory_order_relaxed);
  }
}

void LatencyHistogram::AddTotals(std::uint64_t count, std::uint64_t sum_ticks,
                                 std::uint64_t min_ticks, std::uint64_t max_ticks) {
  if (count == 0) return;
  count_.fetch_add(count, std::memory_order_relaxed);
  sum_ticks_.fetch_add(sum_ticks, std::memory_order_relaxed);
  std::uint64_t seen = min_ticks_.load(std::memory_order_relaxed);
  while (min_ticks < seen &&
         !min_ticks_.compare_exchange_weak(seen, min_ticks, std::memory_order_relaxed)) {
  }
  seen = max_ticks_.load(std::memory_order_relaxed);
  while (max_ticks > seen &&
         !max_ticks_.compare_exchange_weak(seen, max_ticks, std::memory_order_relaxed)) {
  }
}

void LatencyHistogram::Record(double value) {
  const std::uint64_t ticks = ToTicks(value);
  buckets_[BucketIndex(ticks)].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ticks_.fetch_add(ticks, std::memory_order_relaxed);
  std::uint64_t seen = min_ticks_.load(std::memory_order_relaxed);
  while (ticks < seen &&
         !min_ticks_.compare_exchange_weak(seen, ticks, std::memory_order_relaxed)) {
  }
  seen = max_ticks_.load(std::memory_order_relaxed);
  while (ticks > seen &&
         !max_ticks_.compare_exchange_weak(seen, ticks, std::memory_order_relaxed)) {
  }
}

void LatencyHistogram::Reset() {
  for (auto& bucket : buckets_) bucket.store(0, std::memory_order_relaxed);
  count_.store(0, std::memory_order_relaxed);
  sum_ticks_.store(0, std::memory_order_relaxed);
  min_ticks_.store(UINT64_MAX, std::memory_order_relaxed);
  max_ticks_.store(0, std::memory_order_relaxed);
}

double LatencyHistogram::Sum() const {
  return static_cast<double>(sum_ticks_.load(std::memory_order_relaxed)) / ticks_per_unit_;
}

double LatencyHistogram::Min() const {
  const auto ticks = min_ticks_.load(std::memory_order_relaxed);
  return ticks == UINT64_MAX ? 0 : static_cast<double>(ticks) / ticks_per_unit_;
}

double LatencyHistogram::Max() const {
  return static_cast<double>(max_ticks_.load(std::memory_order_relaxed)) / ticks_per_unit_;
}

double LatencyHistogram::Percentile(double q) const {
  // Sum the buckets rather than trusting count_, so a concurrent Record
  // between the two reads cannot push the rank past the last bucket.
  std::uint64_t total = 0;
  for (const auto& bucket : buckets_) total += bucket.load(std::memory_order_relaxed);
  if (total == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // Rank of the q-th sample, 1-based ("nearest rank").
  const auto rank = std::max<std::uint64_t>(
      1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total))));
  std::uint64_t seen = 0;
  for (size_t i = 0; i < kBucketCount; ++i) {
    seen += buckets_[i].load(std::memory_order_relaxed);
    if (seen >= rank) {
      const double lower = static_cast<double>(BucketLowerTicks(i));
      const double upper = static_cast<double>(BucketUpperTicks(i));
      // Single-tick buckets are exact; wider ones report their midpoint.
      const double ticks = (upper - lower <= 1) ? lower : (lower + upper) / 2;
      return std::clamp(ticks / ticks_per_unit_, Min(), Max());
    }
  }
  return Max();
}

HistogramSummary LatencyHistogram::Summarize() const {
  HistogramSummary summary;
  summary.count = Count();
  summary.sum = Sum();
  summary.min = Min();
  summary.max = Max();
  summary.p50 = Percentile(0.50);
  summary.p90 = Percentile(0.90);
  summary.p95 = Percentile(0.95);
  summary.p99 = Percentile(0.99);
  summary.p999 = Percentile(0.999);
  return summary;
}

std::uint64_t LatencyHistogram::CountAtOrBelow(double upper_bound) const {
  const double bound_ticks = upper_bound * ticks_per_unit_;
  std::uint64_t total = 0;
  for (size_t i = 0; i < kBucketCount; ++i) {
    // Bucket i holds integer ticks in [lower, upper): its largest value is upper-1.
    if (static_cast<double>(BucketUpperTicks(i) - 1) > bound_ticks) break;
    total += buckets_[i].load(std::memory_order_relaxed);
  }
  return total;
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (size_t i = 0; i < kBucketCount; ++i) {
    // Most buckets are empty: skip them rather than do an RMW on each.
    const std::uint64_t n = other.buckets_[i].load(std::memory_order_relaxed);
    if (n != 0) buckets_[i].fetch_add(n, std::memory_order_relaxed);
  }
  count_.fetch_add(other.Count(), std::memory_order_relaxed);
  sum_ticks_.fetch_add(other.sum_ticks_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  const auto other_min = other.min_ticks_.load(std::memory_order_relaxed);
  auto seen = min_ticks_.load(std::memory_order_relaxed);
  while (other_min < seen &&
         !min_ticks_.compare_exchange_weak(seen, other_min, std::memory_order_relaxed)) {
  }
  const auto other_max = other.max_ticks_.load(std::memory_order_relaxed);
  seen = max_ticks_.load(std::memory_order_relaxed);
  while (other_max > seen &&
         !max_ticks_.compare_exchange_weak(seen, other_max, std::memory_order_relaxed)) {
  }
}

}  // namespace omnirelay::core
