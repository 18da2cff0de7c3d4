#pragma once
// WatermarkStateMachine: high/low watermarks with hysteresis and a minimum
// dwell time, so a level that hovers around one threshold does not flap.
//
//   normal --(level >= high)--> backpressure
//   backpressure --(level <= low, held at least `min_hold`)--> normal
//
// Levels between low and high keep the current state. Thread-safety: none
// (one owner; BackpressureHub serialises access).
#include <optional>

#include "omnirelay/core/clock.h"

namespace omnirelay::backpressure {

struct WatermarkOptions {
  double high = 0;  // enter backpressure at or above (must be > 0)
  double low = 0;   // leave at or below (must be < high)
  // Minimum time in backpressure before it may clear (0 = none).
  core::Duration min_hold{};
};

class WatermarkStateMachine {
 public:
  explicit WatermarkStateMachine(WatermarkOptions options) : options_(options) {}
  // Feeds the current level; returns the new state when it changed.
  std::optional<bool> Update(double level, core::TimePoint now);
  bool active() const { return active_; }
  double level() const { return level_; }
  core::TimePoint since() const { return since_; }
  std::uint64_t transitions() const { return transitions_; }
  const WatermarkOptions& options() const { return options_; }
  // New watermarks; the current state and its hold are kept.
  void SetOptions(WatermarkOptions options) { options_ = options; }

 private:
  WatermarkOptions options_;
  bool active_ = false;
  double level_ = 0;
  core::TimePoint since_{};
  std::uint64_t transitions_ = 0;
};

}  // namespace omnirelay::backpressure
