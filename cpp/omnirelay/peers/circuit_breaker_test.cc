#include "omnirelay/peers/circuit_breaker.h"

#include <gtest/gtest.h>

#include <vector>

#include "omnirelay/peers/peer.h"
#include "omnirelay/peers/test_util.h"

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;
using core::StatusCode;

struct BreakerFixture {
  std::shared_ptr<core::ManualClock> clock = std::make_shared<core::ManualClock>();
  std::vector<std::pair<BreakerState, BreakerState>> transitions;
  std::shared_ptr<CircuitBreaker> Make(
      CircuitBreakerOptions options = CircuitBreakerOptions::ForTests()) {
    return CircuitBreaker::Create(options, clock, [this](BreakerState from, BreakerState to) {
      transitions.emplace_back(from, to);
    });
  }
  void Fail(CircuitBreaker& breaker, int n, StatusCode code = StatusCode::kUnavailable) {
    for (int i = 0; i < n; ++i) breaker.RecordOutcome(code, false);
  }
};

TEST(CircuitBreakerTest, OpensAfterConsecutiveServerFailuresOnly) {
  BreakerFixture f;
  auto breaker = f.Make();
  f.Fail(*breaker, 2);
  breaker->RecordOutcome(StatusCode::kOk, false);  // success ends the run
  f.Fail(*breaker, 2);
  EXPECT_EQ(breaker->state(), BreakerState::kClosed);
  f.Fail(*breaker, 10, StatusCode::kInvalidArgument);  // client errors never count
  f.Fail(*breaker, 10, StatusCode::kNotFound);
  EXPECT_EQ(breaker->state(), BreakerState::kClosed);
  f.Fail(*breaker, 3, StatusCode::kInternal);
  EXPECT_EQ(breaker->state(), BreakerState::kOpen);
  EXPECT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kRejected);
  ASSERT_EQ(f.transitions.size(), 1u);
  EXPECT_EQ(f.transitions[0], std::make_pair(BreakerState::kClosed, BreakerState::kOpen));
}

TEST(CircuitBreakerTest, EveryServerFailureCodeCounts) {
  for (auto code : {StatusCode::kUnavailable, StatusCode::kInternal, StatusCode::kDataLoss,
                    StatusCode::kUnimplemented, StatusCode::kResourceExhausted,
                    StatusCode::kDeadlineExceeded}) {
    BreakerFixture f;
    auto breaker = f.Make();
    f.Fail(*breaker, 3, code);
    EXPECT_EQ(breaker->state(), BreakerState::kOpen) << core::StatusCodeName(code);
  }
}

TEST(CircuitBreakerTest, ReadmittedByTimerWithoutAnyRequest) {
  BreakerFixture f;
  auto breaker = f.Make();
  f.Fail(*breaker, 3);
  auto snapshot = breaker->Snapshot();
  ASSERT_TRUE(snapshot.reopen_at.has_value());
  EXPECT_EQ(*snapshot.reopen_at, f.clock->Now() + 100ms);
  f.clock->Advance(99ms);
  EXPECT_EQ(breaker->state(), BreakerState::kOpen);
  f.clock->Advance(1ms);  // only the timer acts: nobody calls TryAdmit
  EXPECT_EQ(breaker->state(), BreakerState::kHalfOpen);
  ASSERT_EQ(f.transitions.size(), 2u);
  EXPECT_EQ(f.transitions[1], std::make_pair(BreakerState::kOpen, BreakerState::kHalfOpen));
}

TEST(CircuitBreakerTest, HalfOpenAdmitsConfiguredProbesAndSuccessCloses) {
  BreakerFixture f;
  auto options = CircuitBreakerOptions::ForTests();
  options.half_open_probes = 2;
  auto breaker = f.Make(options);
  f.Fail(*breaker, 3);
  f.clock->Advance(100ms);
  EXPECT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kProbe);
  EXPECT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kProbe);
  EXPECT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kRejected);
  breaker->RecordOutcome(StatusCode::kInvalidArgument, true);  // undecided: slot back
  EXPECT_EQ(breaker->state(), BreakerState::kHalfOpen);
  EXPECT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kProbe);
  breaker->RecordOutcome(StatusCode::kOk, false);  // not a probe: does not decide
  EXPECT_EQ(breaker->state(), BreakerState::kHalfOpen);
  breaker->RecordOutcome(StatusCode::kOk, true);
  EXPECT_EQ(breaker->state(), BreakerState::kClosed);
  EXPECT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kAdmitted);
  EXPECT_EQ(f.transitions.back(), std::make_pair(BreakerState::kHalfOpen, BreakerState::kClosed));
}

TEST(CircuitBreakerTest, FailedProbeReopensWithExponentialCappedDelay) {
  BreakerFixture f;
  auto breaker = f.Make();  // 100ms base, x2, cap 800ms
  f.Fail(*breaker, 3);
  std::vector<core::Duration> delays;
  for (int round = 0; round < 5; ++round) {
    auto reopen = *breaker->Snapshot().reopen_at;
    delays.push_back(reopen - f.clock->Now());
    f.clock->Set(reopen);
    ASSERT_EQ(breaker->state(), BreakerState::kHalfOpen);
    ASSERT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kProbe);
    breaker->RecordOutcome(StatusCode::kUnavailable, true);
    ASSERT_EQ(breaker->state(), BreakerState::kOpen);
  }
  std::vector<core::Duration> expected = {100ms, 200ms, 400ms, 800ms, 800ms};
  EXPECT_EQ(delays, expected);
  // Closing resets the backoff.
  f.clock->Set(*breaker->Snapshot().reopen_at);
  ASSERT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kProbe);
  breaker->RecordOutcome(StatusCode::kOk, true);
  f.Fail(*breaker, 3);
  EXPECT_EQ(*breaker->Snapshot().reopen_at - f.clock->Now(), 100ms);
}

TEST(CircuitBreakerTest, FailureRatioOverWindow) {
  BreakerFixture f;
  CircuitBreakerOptions options;
  options.consecutive_failures = 0;
  options.failure_ratio = 0.5;
  options.ratio_window = 10;
  options.ratio_min_requests = 10;
  auto breaker = f.Make(options);
  for (int i = 0; i < 10; ++i) {  // 40% failures, interleaved: no trip
    breaker->RecordOutcome(i % 5 < 2 ? StatusCode::kInternal : StatusCode::kOk, false);
  }
  EXPECT_EQ(breaker->state(), BreakerState::kClosed);
  for (int i = 0; i < 10; ++i) {  // 50% failures, never two in a row
    breaker->RecordOutcome(i % 2 ? StatusCode::kInternal : StatusCode::kOk, false);
  }
  EXPECT_EQ(breaker->state(), BreakerState::kOpen);
}

TEST(CircuitBreakerTest, PeerCountsTransitionsAndShowsStateInSnapshot) {
  auto clock = std::make_shared<core::ManualClock>();
  auto metrics = std::make_shared<core::MetricsRegistry>();
  PeerOptions options;
  options.breaker = CircuitBreakerOptions::ForTests();
  auto peer = Peer::Create(testing::Desc("a"), options, clock, metrics);
  int notified = 0;
  peer->SetObserver([&](Peer&) { ++notified; });
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(peer->TryAcquire().ok());
    peer->Release(StatusCode::kUnavailable, 1ms);
  }
  EXPECT_EQ(peer->TryAcquire().result, AcquireResult::kCircuitOpen);
  EXPECT_EQ(
      metrics->Total("omnirelay.peer.lease_rejected", {{"peer.rejection_reason", "circuit_open"}}),
      1);
  EXPECT_EQ(peer->Snapshot().breaker->state, BreakerState::kOpen);
  EXPECT_FALSE(peer->IsEligible());
  clock->Advance(100ms);
  EXPECT_TRUE(peer->IsEligible());
  auto probe = peer->TryAcquire();
  ASSERT_TRUE(probe.ok());
  EXPECT_TRUE(probe.probe);
  EXPECT_EQ(peer->TryAcquire().result, AcquireResult::kCircuitOpen);  // one probe only
  peer->Release(StatusCode::kOk, 1ms, probe.probe);
  EXPECT_EQ(peer->Snapshot().breaker->state, BreakerState::kClosed);
  EXPECT_EQ(peer->Snapshot().breaker->transitions, 3u);
  EXPECT_EQ(notified, 3);
  auto count = [&](const char* from, const char* to) {
    return metrics->Total("omnirelay.peer.breaker.transitions",
                          {{"peer.breaker.from", from}, {"peer.breaker.to", to}});
  };
  EXPECT_EQ(count("closed", "open"), 1);
  EXPECT_EQ(count("open", "half_open"), 1);
  EXPECT_EQ(count("half_open", "closed"), 1);
}

TEST(CircuitBreakerTest, DestroyedBreakerTimerIsHarmless) {
  auto clock = std::make_shared<core::ManualClock>();
  {
    auto breaker = CircuitBreaker::Create(CircuitBreakerOptions::ForTests(), clock);
    for (int i = 0; i < 3; ++i) breaker->RecordOutcome(StatusCode::kInternal, false);
  }
  EXPECT_EQ(clock->pending_timers(), 0u);
  clock->Advance(1s);
}

}  // namespace
}  // namespace omnirelay::peers

namespace omnirelay::peers {
namespace {

using namespace std::chrono_literals;
using core::StatusCode;

// The gate a peer's hot path reads instead of the breaker follows every
// state and failure-run change, written under the breaker's mutex.
TEST(CircuitBreakerGateTest, GateMirrorsStateAndFailureRun) {
  BreakerFixture f;
  auto breaker = f.Make();  // trips after 3 failures, 100 ms first delay
  std::atomic<BreakerGate> gate{BreakerGate::kOpen};
  breaker->AttachGate(&gate);
  EXPECT_EQ(gate.load(), BreakerGate::kClosedClean);  // attach publishes at once
  f.Fail(*breaker, 1);
  EXPECT_EQ(gate.load(), BreakerGate::kClosed);                 // a run: successes must be reported
  breaker->RecordOutcome(StatusCode::kInvalidArgument, false);  // a client error ends it too
  EXPECT_EQ(gate.load(), BreakerGate::kClosedClean);
  EXPECT_EQ(breaker->Snapshot().consecutive_failures, 0);
  f.Fail(*breaker, 3);
  EXPECT_EQ(gate.load(), BreakerGate::kOpen);
  f.clock->Advance(100ms);
  EXPECT_EQ(gate.load(), BreakerGate::kHalfOpen);
  ASSERT_EQ(breaker->TryAdmit(), CircuitBreaker::Admission::kProbe);
  breaker->RecordOutcome(StatusCode::kOk, true);
  EXPECT_EQ(breaker->state(), BreakerState::kClosed);
  EXPECT_EQ(gate.load(), BreakerGate::kClosedClean);
  // Detached: later transitions leave the byte alone.
  breaker->AttachGate(nullptr);
  f.Fail(*breaker, 3);
  EXPECT_EQ(breaker->state(), BreakerState::kOpen);
  EXPECT_EQ(gate.load(), BreakerGate::kClosedClean);
}

TEST(CircuitBreakerGateTest, RatioRuleKeepsEveryOutcomeReported) {
  BreakerFixture f;
  CircuitBreakerOptions options = CircuitBreakerOptions::ForTests();
  options.failure_ratio = 0.5;
  auto breaker = f.Make(options);
  std::atomic<BreakerGate> gate{BreakerGate::kClosedClean};
  breaker->AttachGate(&gate);
  EXPECT_EQ(gate.load(), BreakerGate::kClosed);
}

// Through a peer: a success after a failure run still ends the run (the
// release reports it because the gate is not clean), and once clean a
// success skips the breaker without changing what the breaker would decide.
TEST(CircuitBreakerGateTest, PeerReleasesEndFailureRunsAndTripAsBefore) {
  auto clock = std::make_shared<core::ManualClock>();
  PeerOptions options;
  options.breaker = CircuitBreakerOptions::ForTests();  // 3 in a row trip it
  auto peer = Peer::Create(testing::Desc("a"), options, clock);
  auto lease_and_release = [&](StatusCode code) {
    auto admission = peer->TryAcquire();
    ASSERT_TRUE(admission.ok());
    peer->Release(code, 1ms, admission.probe);
  };
  for (int round = 0; round < 5; ++round) {
    lease_and_release(StatusCode::kUnavailable);
    lease_and_release(StatusCode::kUnavailable);
    lease_and_release(StatusCode::kOk);  // ends the run of 2
    lease_and_release(StatusCode::kOk);
  }
  EXPECT_EQ(peer->breaker()->state(), BreakerState::kClosed);
  EXPECT_EQ(peer->breaker()->Snapshot().consecutive_failures, 0);
  for (int i = 0; i < 3; ++i) lease_and_release(StatusCode::kUnavailable);
  EXPECT_EQ(peer->breaker()->state(), BreakerState::kOpen);
  EXPECT_FALSE(peer->IsEligible());
  EXPECT_EQ(peer->TryAcquire().result, AcquireResult::kCircuitOpen);
  clock->Advance(100ms);  // half-open: one probe
  EXPECT_TRUE(peer->IsEligible());
  auto probe = peer->TryAcquire();
  ASSERT_TRUE(probe.ok());
  EXPECT_TRUE(probe.probe);
  EXPECT_EQ(peer->TryAcquire().result, AcquireResult::kCircuitOpen);  // probe slot taken
  peer->Release(StatusCode::kOk, 1ms, probe.probe);
  EXPECT_EQ(peer->breaker()->state(), BreakerState::kClosed);
  auto again = peer->TryAcquire();
  EXPECT_TRUE(again.ok());
  EXPECT_FALSE(again.probe);
  peer->Release(StatusCode::kOk, 1ms, again.probe);
}

}  // namespace
}  // namespace omnirelay::peers
