#pragma once
// Helpers shared by the peer kit's tests.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <thread>

#include "omnirelay/core/alloc_counter.h"
#include "omnirelay/core/clock.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/peers/coordinator.h"

namespace omnirelay::peers::testing {

// The per-thread allocation count of core/alloc_counter.h (binaries that
// count expand OMNIRELAY_COUNT_ALLOCATIONS() once).
using ::omnirelay::core::testing::thread_allocations;

inline PeerDescriptor Desc(std::string id, std::string zone = "",
                           std::vector<std::string> protocols = {}) {
  PeerDescriptor d;
  d.id = id;
  d.endpoint = "grpc://" + id + ":9090";
  d.zone = std::move(zone);
  d.protocols = std::move(protocols);
  return d;
}

struct Fixture {
  std::shared_ptr<core::ManualClock> clock = std::make_shared<core::ManualClock>();
  std::shared_ptr<core::MetricsRegistry> metrics = std::make_shared<core::MetricsRegistry>();

  std::unique_ptr<PeerListCoordinator> Make(
      std::string chooser, int peers, int cap = 0, ChooserOptions chooser_options = {},
      std::shared_ptr<PeerLeaseHealthTracker> tracker = nullptr, bool with_breaker = true) {
    PeerListCoordinatorOptions options;
    options.service = "svc";
    options.transport = "grpc";
    options.chooser = std::move(chooser);
    if (chooser_options.seed == 0) chooser_options.seed = 42;
    options.chooser_options = std::move(chooser_options);
    options.peer_defaults.max_inflight = cap;
    if (with_breaker) {
      options.peer_defaults.breaker = CircuitBreakerOptions::ForTests();
    } else {
      options.peer_defaults.breaker = std::nullopt;
    }
    auto coordinator = PeerListCoordinator::Create(options, clock, metrics, std::move(tracker));
    for (int i = 0; i < peers; ++i) {
      auto added = (*coordinator)->AddPeer(Desc("p" + std::to_string(i)));
      if (!added.ok()) std::abort();
    }
    return *std::move(coordinator);
  }

  double Total(std::string_view name, const core::Tags& tags = {}) const {
    return metrics->Total(name, tags);
  }
};

// Waits (real time, bounded) until `predicate` holds; for handing off to a
// thread blocked in Acquire. Returns whether it held.
template <typename Predicate>
bool Eventually(Predicate predicate) {
  for (int i = 0; i < 5000; ++i) {
    if (predicate()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return predicate();
}

}  // namespace omnirelay::peers::testing
