#include "omnirelay/peers/geo_chooser.h"

#include <algorithm>

#include "omnirelay/peers/coarse_clock.h"

namespace omnirelay::peers {
namespace {

const core::MetricDescriptor kGeoRouted{"omnirelay.geo.routed", core::MetricKind::kCounter,
                                        "{request}", "Picks of the geo chooser per peer region."};
const core::MetricDescriptor kGeoMode{"omnirelay.geo.mode", core::MetricKind::kGauge, "1",
                                      "Geo chooser mode: 0 = local region, 1 = fallback."};
const core::MetricDescriptor kGeoTransitions{
    "omnirelay.geo.transitions", core::MetricKind::kCounter, "{transition}",
    "Geo chooser mode changes, by the mode entered (local, fallback)."};

std::int64_t Nanos(core::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// Per snapshot: the two groups as sub-snapshots of their own (the inner
// choosers index those), and the maps between full and group indexes.
struct GeoState final : ChooserState {
  PeerSnapshot group[2];               // 0 = local region, 1 = other regions
  std::vector<std::vector<int>> full;  // full[g][sub] = index in the full snapshot
  std::vector<std::int8_t> group_of;   // by full index
  std::vector<int> sub_of;             // by full index
  std::vector<core::Counter*> routed;  // by full index; null without metrics
};

int PickIn(PeerChooser& chooser, const GeoState& state, int g, const core::RequestMeta& meta) {
  const PeerSnapshot& sub = state.group[g];
  if (sub.raw.empty()) return -1;
  int index = chooser.Pick(sub, meta);
  return index < 0 ? -1 : state.full[g][index];
}

}  // namespace

absl::StatusOr<GeoLatencySignal> ParseGeoLatencySignal(std::string_view name) {
  if (name == "ewma") return GeoLatencySignal::kEwma;
  if (name == "p50") return GeoLatencySignal::kP50;
  if (name == "p90") return GeoLatencySignal::kP90;
  if (name == "p99") return GeoLatencySignal::kP99;
  return core::MakeStatus(
      core::StatusCode::kInvalidArgument,
      "unknown latency signal '" + std::string(name) + "' (known: ewma, p50, p90, p99)",
      "invalid-geo-option");
}

absl::StatusOr<std::unique_ptr<GeoChooser>> GeoChooser::Create(
    GeoChooserOptions options, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics) {
  auto invalid = [](std::string message) {
    return core::MakeStatus(core::StatusCode::kInvalidArgument, message, "invalid-geo-option");
  };
  if (clock == nullptr) return invalid("geo chooser needs a clock");
  if (options.inner == "geo") return invalid("geo chooser cannot nest itself");
  if (options.failure_rate_threshold < 0) return invalid("failureRateThreshold must be >= 0");
  if (options.hold < core::Duration::zero()) return invalid("holdMs must be >= 0");
  if (options.evaluate_every <= core::Duration::zero()) {
    return invalid("evaluateEveryMs must be > 0");
  }
  auto local = CreateChooser(options.inner, options.inner_options);
  if (!local.ok()) return local.status();
  ChooserOptions other_options = options.inner_options;
  if (other_options.seed != 0) other_options.seed ^= 0x5DEECE66Dull;
  auto other = CreateChooser(options.inner, other_options);
  if (!other.ok()) return other.status();
  return std::unique_ptr<GeoChooser>(new GeoChooser(std::move(options), std::move(clock),
                                                    std::move(metrics), *std::move(local),
                                                    *std::move(other)));
}

GeoChooser::GeoChooser(GeoChooserOptions options, std::shared_ptr<core::Clock> clock,
                       std::shared_ptr<core::MetricsRegistry> metrics,
                       std::unique_ptr<PeerChooser> local, std::unique_ptr<PeerChooser> other)
    : options_(std::move(options)),
      clock_(std::move(clock)),
      metrics_(std::move(metrics)),
      local_(std::move(local)),
      other_(std::move(other)),
      tracks_load_(local_->tracks_load()),
      coarse_clock_(dynamic_cast<const core::SystemClock*>(clock_.get()) != nullptr) {
  if (metrics_) {
    mode_gauge_ = &metrics_->GetGauge(kGeoMode, options_.tags);
    mode_gauge_->Set(0);
    auto tagged = [&](std::string mode) {
      core::Tags tags = options_.tags;
      tags.emplace("geo.mode", std::move(mode));
      return tags;
    };
    to_local_ = &metrics_->GetCounter(kGeoTransitions, tagged("local"));
    to_fallback_ = &metrics_->GetCounter(kGeoTransitions, tagged("fallback"));
  }
}

std::shared_ptr<ChooserState> GeoChooser::Build(const std::vector<Peer*>& peers) {
  auto state = std::make_shared<GeoState>();
  state->full.resize(2);
  state->group_of.resize(peers.size());
  state->sub_of.resize(peers.size());
  state->routed.resize(peers.size(), nullptr);
  for (int i = 0; i < static_cast<int>(peers.size()); ++i) {
    const auto& region = peers[i]->descriptor().region;
    const int g = !options_.region.empty() && region == options_.region ? 0 : 1;
    state->group_of[i] = static_cast<std::int8_t>(g);
    state->sub_of[i] = static_cast<int>(state->full[g].size());
    state->full[g].push_back(i);
    state->group[g].raw.push_back(peers[i]);
    if (metrics_) {
      core::Tags tags = options_.tags;
      tags.emplace("geo.region", region.empty() ? "unknown" : region);
      state->routed[i] = &metrics_->GetCounter(kGeoRouted, tags);
    }
  }
  state->group[0].chooser_state = local_->Build(state->group[0].raw);
  state->group[1].chooser_state = other_->Build(state->group[1].raw);
  return state;
}

void GeoChooser::EvaluateIfDue(const PeerSnapshot& snapshot) {
  std::int64_t now_ns;
  if (coarse_clock_) {
    // The ticker-refreshed clock Peer uses (coarse_clock.h: one load, a few
    // ms behind at most): the evaluation interval is far coarser than that.
    // ManualClock stays exact.
    now_ns = internal::CoarseNowNanos();
  } else {
    now_ns = Nanos(clock_->Now());
  }
  std::int64_t due = next_evaluation_ns_.load(std::memory_order_relaxed);
  if (now_ns >= due &&
      next_evaluation_ns_.compare_exchange_strong(
          due,
          now_ns +
              std::chrono::duration_cast<std::chrono::nanoseconds>(options_.evaluate_every).count(),
          std::memory_order_relaxed)) {
    Evaluate(snapshot, core::TimePoint(std::chrono::duration_cast<core::TimePoint::duration>(
                           std::chrono::nanoseconds(now_ns))));
  }
}

bool GeoChooser::PreferLocal() {
  if (mode_.load(std::memory_order_acquire) == Mode::kLocal) return true;
  if (options_.probe_every == 0) return false;
  // Relaxed load + store: a lost increment only shifts the probe by one.
  const std::uint64_t n = probe_counter_.load(std::memory_order_relaxed) + 1;
  probe_counter_.store(n, std::memory_order_relaxed);
  return n % options_.probe_every == 0;
}

void GeoChooser::CountRouted(const PeerSnapshot& snapshot, int index) const {
  const auto* state = static_cast<const GeoState*>(snapshot.chooser_state.get());
  if (state == nullptr || index < 0 || index >= static_cast<int>(state->routed.size())) return;
  if (state->routed[index] != nullptr) state->routed[index]->Add();
}

int GeoChooser::Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) {
  const auto* state = static_cast<const GeoState*>(snapshot.chooser_state.get());
  if (state == nullptr) return -1;
  EvaluateIfDue(snapshot);
  const bool local_first = PreferLocal();
  int index = local_first ? PickIn(*local_, *state, 0, meta) : PickIn(*other_, *state, 1, meta);
  if (index < 0) {
    index = local_first ? PickIn(*other_, *state, 1, meta) : PickIn(*local_, *state, 0, meta);
  }
  if (index >= 0 && state->routed[index] != nullptr) state->routed[index]->Add();
  return index;
}

void GeoChooser::ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                            std::vector<int>* order) {
  const auto* state = static_cast<const GeoState*>(snapshot.chooser_state.get());
  if (state == nullptr) return PeerChooser::ProbeOrder(snapshot, meta, first, order);
  // The preferred group's order first, then the other's: a refused pick
  // stays in the current region while any peer there can take it.
  const int preferred = mode() == Mode::kLocal ? 0 : 1;
  order->clear();
  std::vector<int> sub;
  for (int g : {preferred, 1 - preferred}) {
    PeerChooser& chooser = g == 0 ? *local_ : *other_;
    const int sub_first = first >= 0 && state->group_of[first] == g ? state->sub_of[first] : -1;
    chooser.ProbeOrder(state->group[g], meta, sub_first, &sub);
    for (int i : sub) order->push_back(state->full[g][i]);
  }
}

void GeoChooser::OnPeerChanged(const PeerSnapshot& snapshot, int index) {
  const auto* state = static_cast<const GeoState*>(snapshot.chooser_state.get());
  if (state == nullptr || index < 0 || index >= static_cast<int>(state->group_of.size())) return;
  const int g = state->group_of[index];
  (g == 0 ? local_ : other_)->OnPeerChanged(state->group[g], state->sub_of[index]);
}

void GeoChooser::EvaluateNow(const PeerSnapshot& snapshot) { Evaluate(snapshot, clock_->Now()); }

void GeoChooser::Evaluate(const PeerSnapshot& snapshot, core::TimePoint now) {
  std::unique_lock lock(eval_mu_, std::try_to_lock);
  if (!lock.owns_lock()) return;  // another thread is evaluating right now
  const auto* state = static_cast<const GeoState*>(snapshot.chooser_state.get());
  if (state == nullptr) return;
  const PeerSnapshot& local = state->group[0];

  bool any_eligible = false;
  double latency_sum = 0;
  int latency_count = 0;
  std::uint64_t successes = 0, failures = 0;
  for (Peer* peer : local.raw) {
    successes += peer->SuccessCount();
    failures += peer->FailureCount();
    if (!peer->IsEligible()) continue;
    any_eligible = true;
    if (options_.latency_signal == GeoLatencySignal::kEwma) {
      if (auto ewma = peer->LatencyEwmaMs()) {
        latency_sum += *ewma;
        ++latency_count;
      }
    } else {
      const LatencyPercentiles p = peer->WindowPercentiles();
      if (p.samples == 0) continue;
      latency_sum += options_.latency_signal == GeoLatencySignal::kP50   ? p.p50_ms
                     : options_.latency_signal == GeoLatencySignal::kP90 ? p.p90_ms
                                                                         : p.p99_ms;
      ++latency_count;
    }
  }

  // Failure ratio of the last complete window of >= min_samples outcomes; it
  // stays in force until the next window completes (so a region that failed
  // is not called good merely because few calls reached it since).
  if (last_state_ != state || successes < last_successes_ || failures < last_failures_) {
    last_state_ = state;  // a new peer set: a new baseline
    last_successes_ = successes;
    last_failures_ = failures;
  } else {
    const std::uint64_t ds = successes - last_successes_, df = failures - last_failures_;
    if (ds + df >= std::max<std::uint64_t>(options_.min_samples, 1)) {
      failure_rate_ = static_cast<double>(df) / static_cast<double>(ds + df);
      last_successes_ = successes;
      last_failures_ = failures;
    }
  }

  const bool latency_bad = options_.latency_threshold_ms > 0 && latency_count > 0 &&
                           latency_sum / latency_count > options_.latency_threshold_ms;
  const bool failures_bad =
      options_.failure_rate_threshold < 1 && failure_rate_ > options_.failure_rate_threshold;
  const bool bad = !any_eligible || latency_bad || failures_bad;

  if (mode_.load(std::memory_order_relaxed) == Mode::kLocal) {
    if (bad) {
      good_since_.reset();
      SetMode(Mode::kFallback);
    }
    return;
  }
  if (bad) {
    good_since_.reset();  // the hold starts over: no return on a short good spell
    return;
  }
  if (!good_since_) good_since_ = now;
  if (now - *good_since_ >= options_.hold) {
    good_since_.reset();
    SetMode(Mode::kLocal);
  }
}

void GeoChooser::SetMode(Mode mode) {
  mode_.store(mode, std::memory_order_release);
  transitions_.fetch_add(1, std::memory_order_relaxed);
  if (mode_gauge_ != nullptr) mode_gauge_->Set(mode == Mode::kLocal ? 0 : 1);
  core::Counter* counter = mode == Mode::kLocal ? to_local_ : to_fallback_;
  if (counter != nullptr) counter->Add();
}

}  // namespace omnirelay::peers
