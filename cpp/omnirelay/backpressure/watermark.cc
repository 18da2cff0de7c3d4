#include "omnirelay/backpressure/watermark.h"

namespace omnirelay::backpressure {

std::optional<bool> WatermarkStateMachine::Update(double level, core::TimePoint now) {
  level_ = level;
  if (!active_ && level >= options_.high) {
    active_ = true;
  } else if (active_ && level <= options_.low && now - since_ >= options_.min_hold) {
    active_ = false;
  } else {
    return std::nullopt;
  }
  since_ = now;
  ++transitions_;
  return active_;
}

}  // namespace omnirelay::backpressure
