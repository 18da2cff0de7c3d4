#include "omnirelay/resourcelease/diagnostics.h"

#include "omnirelay/core/request_meta.h"

namespace omnirelay::resourcelease {

nlohmann::json SignalToJson(const BackpressureSignal& s, std::uint64_t sequence) {
  return {{"namespace", s.queue},
          {"active", s.active},
          {"state", s.active ? "backpressure" : "normal"},
          {"pending", s.pending},
          {"highWatermark", s.high_watermark},
          {"lowWatermark", s.low_watermark},
          {"at", core::FormatTimestamp(s.at)},
          {"sequence", sequence}};
}

BackpressureListener BackpressureDiagnostics::Listener() {
  return [this](const BackpressureSignal& signal) { OnSignal(signal); };
}

void BackpressureDiagnostics::Track(const QueueOptions& options, core::TimePoint now) {
  std::lock_guard lock(mu_);
  latest_.try_emplace(options.name,
                      BackpressureSignal{.queue = options.name,
                                         .active = false,
                                         .pending = 0,
                                         .high_watermark = options.high_watermark,
                                         .low_watermark = options.low_watermark,
                                         .at = now},
                      0);
}

void BackpressureDiagnostics::OnSignal(const BackpressureSignal& signal) {
  {
    std::lock_guard lock(mu_);
    ++sequence_;
    latest_[signal.queue] = {signal, sequence_};
    ring_.emplace_back(sequence_, signal);
    while (ring_.size() > history_) ring_.pop_front();
  }
  cv_.notify_all();
}

nlohmann::json BackpressureDiagnostics::Latest() const {
  std::lock_guard lock(mu_);
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, entry] : latest_) out[name] = SignalToJson(entry.first, entry.second);
  return out;
}

std::uint64_t BackpressureDiagnostics::Cursor() const {
  std::lock_guard lock(mu_);
  return sequence_;
}

std::optional<nlohmann::json> BackpressureDiagnostics::Next(std::uint64_t& cursor,
                                                            core::Duration timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return closed_ || sequence_ > cursor; });
  if (closed_ || sequence_ <= cursor) return std::nullopt;
  for (const auto& [seq, signal] : ring_) {
    if (seq > cursor) {
      cursor = seq;
      return SignalToJson(signal, seq);
    }
  }
  cursor = sequence_;
  return std::nullopt;
}

void BackpressureDiagnostics::Close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

bool BackpressureDiagnostics::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

}  // namespace omnirelay::resourcelease
