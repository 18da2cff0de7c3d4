#pragma once
// BackpressureDiagnostics: a backpressure listener that keeps the latest
// signal per namespace and a bounded history of transitions that any number
// of readers (the SSE endpoint, CLI watchers) follow with a cursor.
//
// Readers never slow the queue: OnSignal (called under the queue lock) only
// appends to a ring of `history` entries and notifies; a reader that falls
// more than `history` transitions behind skips to the oldest kept one.
// Close() wakes every reader for good (node shutdown).
// Thread-safety: all methods are thread-safe.
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "omnirelay/resourcelease/queue.h"

namespace omnirelay::resourcelease {

nlohmann::json SignalToJson(const BackpressureSignal& signal, std::uint64_t sequence);

class BackpressureDiagnostics {
 public:
  explicit BackpressureDiagnostics(size_t history = 1024) : history_(history) {}

  // The listener to register on each queue.
  BackpressureListener Listener();
  void OnSignal(const BackpressureSignal& signal);
  // Seeds a namespace's state (inactive) so GET shows every queue.
  void Track(const QueueOptions& options, core::TimePoint now);

  // {"<namespace>": {"active":..,"pending":..,"highWatermark":..,...}}
  nlohmann::json Latest() const;

  // The next transition after `cursor` (0 = from now on), waiting up to
  // `timeout`; nullopt on timeout or once closed. Advances `cursor`.
  std::optional<nlohmann::json> Next(std::uint64_t& cursor, core::Duration timeout);
  // The current sequence (a cursor that sees only later transitions).
  std::uint64_t Cursor() const;
  void Close();
  bool closed() const;

 private:
  const size_t history_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::pair<BackpressureSignal, std::uint64_t>> latest_;
  std::deque<std::pair<std::uint64_t, BackpressureSignal>> ring_;
  std::uint64_t sequence_ = 0;
  bool closed_ = false;
};

}  // namespace omnirelay::resourcelease
