#pragma once
// A log-linear histogram for latencies (and any other non-negative values),
// precise enough for p99.9: every value lands in a bucket whose width is at
// most 1/64 of its lower bound, so a reported percentile is within ~1.6% of
// the exact sample (tests compare against sorted samples). No HdrHistogram is
// packaged in Debian; this is the one deliberately hand-written piece.
//
// Values are recorded in the metric's unit (milliseconds for `*.duration`)
// and stored as integer ticks of `1/ticks_per_unit` of it (default 1000: a
// millisecond histogram resolves microseconds).
//
// Layout: ticks < 64 each have their own bucket; above that, every power of
// two [2^e, 2^(e+1)) is split into 64 equal sub-buckets. 2^40 ticks caps the
// range (about 12 days in microseconds); larger values saturate the top bucket.
//
// Thread-safety: Record() is lock-free (relaxed atomics) and safe from any
// thread; readers see a consistent-enough view (counts may lag by in-flight
// records, never tear).
#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

namespace omnirelay::core {

struct HistogramSummary {
  std::uint64_t count = 0;
  double sum = 0;
  double min = 0;
  double max = 0;
  double p50 = 0;
  double p90 = 0;
  double p95 = 0;
  double p99 = 0;
  double p999 = 0;
};

class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 6;
  static constexpr std::uint64_t kSubBuckets = 1u << kSubBucketBits;  // 64
  static constexpr int kMaxExponent = 40;
  static constexpr size_t kBucketCount = kSubBuckets * (kMaxExponent - kSubBucketBits + 2);

  explicit LatencyHistogram(double ticks_per_unit = 1000.0);

  void Record(double value);
  void Reset();

  std::uint64_t Count() const { return count_.load(std::memory_order_relaxed); }
  double Sum() const;
  double Min() const;
  double Max() const;
  // q in [0, 1]; 0 when empty. Returns the midpoint of the bucket holding the
  // q-th sample, clamped to the recorded min/max.
  double Percentile(double q) const;
  HistogramSummary Summarize() const;
  // Number of recorded values <= upper_bound (bucket-accurate: a bucket is
  // counted when its upper edge is <= upper_bound). Used for Prometheus buckets.
  std::uint64_t CountAtOrBelow(double upper_bound) const;

  // Adds every sample of `other` into this histogram.
  void Merge(const LatencyHistogram& other);

  // Raw access for sharded recorders (e.g. per-thread cells summed at scrape
  // time, see peers/peer_stats.h): they convert and bucket a value exactly as
  // Record() does, keep their own counts, and add them in with AddRaw/AddTotals.
  std::uint64_t ToTicks(double value) const;
  static size_t BucketIndex(std::uint64_t ticks);
  void AddRaw(size_t bucket, std::uint64_t samples);
  // Adds `count` samples summing to `sum_ticks` with the given extremes (a
  // min of UINT64_MAX / count 0 adds nothing to min/max).
  void AddTotals(std::uint64_t count, std::uint64_t sum_ticks, std::uint64_t min_ticks,
                 std::uint64_t max_ticks);

 private:
  static std::uint64_t BucketLowerTicks(size_t index);
  static std::uint64_t BucketUpperTicks(size_t index);  // exclusive

  double ticks_per_unit_;
  std::array<std::atomic<std::uint64_t>, kBucketCount> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_ticks_{0};
  std::atomic<std::uint64_t> min_ticks_{UINT64_MAX};
  std::atomic<std::uint64_t> max_ticks_{0};
};

}  // namespace omnirelay::core
