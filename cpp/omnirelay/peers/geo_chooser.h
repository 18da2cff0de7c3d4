#pragma once
// GeoChooser: region-aware routing with hysteresis (docs/peers.md "geo").
//
// Peers are split, once per membership change (Build), into the local region
// (descriptor.region == options.region) and the rest. Each group has its own
// inner chooser (fewest-pending by default) over its own sub-snapshot, so the
// inner chooser's state and cost are exactly what they are standalone.
//
// Mode (an atomic, read by every pick):
//   local     picks go to the local group; a pick falls through to the other
//             group only when no local peer is pickable at that instant.
//   fallback  picks go to the other group, except one pick in `probe_every`
//             which goes local so the local peers' latency/outcome feedback
//             stays fresh (without it a degraded region could never be seen
//             healing: nothing would be sent to it).
// Evaluation (at most once per `evaluate_every`, by whichever pick first sees
// the interval elapsed; a CAS elects it, so exactly one thread evaluates):
//   local is "bad" when no local peer is eligible, or the local latency signal
//   (mean over eligible local peers with samples of their EWMA, or of their
//   window p50/p90/p99) exceeds latency_threshold, or the local failure rate
//   since the previous evaluation (with at least min_samples outcomes)
//   exceeds failure_rate_threshold.
//   local -> fallback as soon as an evaluation finds local bad.
//   fallback -> local only when every evaluation for `hold` has found local
//   good (one bad evaluation restarts the hold): oscillating inputs never
//   bring traffic back, so there is no flapping.
//
// Cost: a pick is one (coarse, for the SystemClock) clock read, two atomic loads, and the inner
// chooser's pick on the sub-snapshot; no allocation. Evaluation reads per-peer counters (a short
// mutex in the peer kit's stat directory) but never on the pick path of other threads (they do not
// wait for it).
//
// Metrics (tags: rpc.service/rpc.transport given in `tags`, plus geo.region):
//   omnirelay.geo.routed{geo.region}        picks per peer region
//   omnirelay.geo.mode                       0 = local, 1 = fallback
//   omnirelay.geo.transitions{geo.mode}      entries into local / fallback
// Thread-safety: as every chooser (chooser.h).
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/peers/chooser.h"

namespace omnirelay::peers {

enum class GeoLatencySignal : std::uint8_t { kEwma, kP50, kP90, kP99 };

struct GeoChooserOptions {
  std::string region;  // the caller's region; empty = no local region (all "other")
  // Local latency above this (ms) -> fallback; <= 0 disables the latency rule.
  double latency_threshold_ms = 250;
  GeoLatencySignal latency_signal = GeoLatencySignal::kEwma;
  // Local failure ratio above this -> fallback; >= 1 disables the rule.
  double failure_rate_threshold = 0.5;
  std::uint64_t min_samples = 10;  // outcomes needed before the failure rule applies
  core::Duration hold = std::chrono::seconds(10);  // local good this long before returning
  core::Duration evaluate_every = std::chrono::milliseconds(100);
  std::uint32_t probe_every = 20;  // in fallback, 1 pick in N goes local; 0 = never
  std::string inner = "fewest-pending";
  ChooserOptions inner_options;
  core::Tags tags;  // added to every metric series
};

class GeoChooser final : public PeerChooser {
 public:
  enum class Mode : std::uint8_t { kLocal = 0, kFallback = 1 };

  // InvalidArgument for an unknown inner chooser or bad thresholds.
  static absl::StatusOr<std::unique_ptr<GeoChooser>> Create(
      GeoChooserOptions options, std::shared_ptr<core::Clock> clock,
      std::shared_ptr<core::MetricsRegistry> metrics);

  std::string_view name() const override { return "geo"; }
  std::shared_ptr<ChooserState> Build(const std::vector<Peer*>& peers) override;
  int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  void ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;
  bool tracks_load() const override { return tracks_load_; }
  void OnPeerChanged(const PeerSnapshot& snapshot, int index) override;

  Mode mode() const { return mode_.load(std::memory_order_acquire); }
  std::uint64_t transitions() const { return transitions_.load(std::memory_order_relaxed); }
  const GeoChooserOptions& options() const { return options_; }
  // Runs an evaluation now against `snapshot` (tests, diagnostics).
  void EvaluateNow(const PeerSnapshot& snapshot);

  // For a chooser that wraps the geo decision instead of picking through it
  // (the shard route's sticky geo routing, shards/shard_chooser.h). The
  // snapshot must carry state from this chooser's Build.
  // The evaluation Pick runs, if `evaluate_every` has elapsed (CAS-elected).
  void EvaluateIfDue(const PeerSnapshot& snapshot);
  // Whether this decision should use the local region: mode local, or the
  // 1-in-`probe_every` probe while in fallback (advances the probe counter).
  bool PreferLocal();
  // Counts omnirelay.geo.routed for the peer at `index` of `snapshot`.
  void CountRouted(const PeerSnapshot& snapshot, int index) const;

 private:
  GeoChooser(GeoChooserOptions options, std::shared_ptr<core::Clock> clock,
             std::shared_ptr<core::MetricsRegistry> metrics, std::unique_ptr<PeerChooser> local,
             std::unique_ptr<PeerChooser> other);
  void Evaluate(const PeerSnapshot& snapshot, core::TimePoint now);
  void SetMode(Mode mode);

  const GeoChooserOptions options_;
  const std::shared_ptr<core::Clock> clock_;
  const std::shared_ptr<core::MetricsRegistry> metrics_;
  std::unique_ptr<PeerChooser> local_;
  std::unique_ptr<PeerChooser> other_;
  bool tracks_load_;
  const bool coarse_clock_;  // the SystemClock: read internal::CoarseNowNanos() instead

  std::atomic<Mode> mode_{Mode::kLocal};
  std::atomic<std::int64_t> next_evaluation_ns_{0};
  std::atomic<std::uint64_t> probe_counter_{0};
  std::atomic<std::uint64_t> transitions_{0};

  // Evaluation state: only the elected evaluator touches it (eval_mu_).
  std::mutex eval_mu_;
  std::optional<core::TimePoint> good_since_;
  std::uint64_t last_successes_ = 0;
  std::uint64_t last_failures_ = 0;
  double failure_rate_ = 0;           // of the last complete window
  const void* last_state_ = nullptr;  // counters reset when the peer set changed

  core::Gauge* mode_gauge_ = nullptr;
  core::Counter* to_local_ = nullptr;
  core::Counter* to_fallback_ = nullptr;
};

// The geo chooser's latency-signal names: "ewma", "p50", "p90", "p99".
absl::StatusOr<GeoLatencySignal> ParseGeoLatencySignal(std::string_view name);

}  // namespace omnirelay::peers
