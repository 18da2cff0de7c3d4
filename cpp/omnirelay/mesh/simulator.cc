#include "omnirelay/mesh/simulator.h"

#include <cstdio>

namespace omnirelay::mesh {

std::string Simulator::NameOf(int i) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "n%d", i);
  return buf;
}

Simulator::Simulator(SimulatorOptions options)
    : options_(std::move(options)),
      clock_(std::make_shared<SimClock>()),
      net_(std::make_shared<SimNetwork>(clock_,
                                        [&] {
                                          auto n = options_.network;
                                          n.seed = options_.seed;
                                          return n;
                                        }())),
      start_(clock_->Now()) {
  for (int i = 0; i < options_.nodes; ++i) AddNode();
  if (options_.converged_start) {
    std::vector<MemberRecord> all;
    all.reserve(nodes_.size());
    for (auto& n : nodes_) all.push_back(n->SelfRecord());
    for (auto& n : nodes_) n->Seed(all);
    for (auto& n : nodes_) n->Start();
  } else {
    nodes_[0]->Start();
    for (std::size_t i = 1; i < nodes_.size(); ++i) {
      clock_->RunFor(options_.join_spacing);
      nodes_[i]->Start({NameOf(0)});
    }
  }
}

Simulator::~Simulator() {
  for (auto& n : nodes_) n->Stop();
}

int Simulator::AddNode() {
  const int index = static_cast<int>(nodes_.size());
  const std::string name = NameOf(index);
  Options o = options_.membership;
  o.seed = options_.seed * 1000003ull + static_cast<std::uint64_t>(index);
  // In the simulator the address is the name: short strings stay inline.
  auto node = Membership::Create(LocalIdentity{name, name, {}}, o, clock_, net_->Endpoint(name));
  node->AddListener([this](const MemberEvent& e) {
    if (down_names_.count(e.member.id)) return;
    if (e.kind == MemberEvent::Kind::kDead) ++false_deaths_;
    if (e.kind == MemberEvent::Kind::kSuspect) ++false_suspicions_;
  });
  net_->Attach(name, node);
  nodes_.push_back(std::move(node));
  up_.push_back(true);
  return index;
}

double Simulator::now_s() const {
  return std::chrono::duration<double>(clock_->Now() - start_).count();
}

void Simulator::RunFor(core::Duration d) { clock_->RunFor(d); }

bool Simulator::RunUntil(const std::function<bool()>& done, core::Duration limit,
                         core::Duration step) {
  const auto end = clock_->Now() + limit;
  while (clock_->Now() < end) {
    if (done()) return true;
    clock_->RunFor(step);
  }
  return done();
}

void Simulator::Crash(int i) {
  const auto name = NameOf(i);
  down_names_.insert(name);
  up_[static_cast<std::size_t>(i)] = false;
  net_->SetDown(name, true);
  nodes_[static_cast<std::size_t>(i)]->Stop();
}

void Simulator::Leave(int i) {
  down_names_.insert(NameOf(i));
  up_[static_cast<std::size_t>(i)] = false;
  nodes_[static_cast<std::size_t>(i)]->Leave();
  net_->SetDown(NameOf(i), true);
}

int Simulator::Join(int seed) {
  const int i = AddNode();
  nodes_[static_cast<std::size_t>(i)]->Start({NameOf(seed)});
  return i;
}

void Simulator::Partition(const std::vector<int>& a, const std::vector<int>& b) {
  std::vector<std::string> na, nb;
  for (int i : a) na.push_back(NameOf(i));
  for (int i : b) nb.push_back(NameOf(i));
  net_->Partition(na, nb);
}

void Simulator::Heal() { net_->Heal(); }
void Simulator::SetLoss(double loss) { net_->SetLoss(loss); }

int Simulator::CountSeeing(int member, MemberState state) const {
  const auto name = NameOf(member);
  int count = 0;
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (!up_[i] || static_cast<int>(i) == member) continue;
    auto m = nodes_[i]->Find(name);
    if (m && m->record.state == state) ++count;
  }
  return count;
}

bool Simulator::Converged() const {
  std::size_t up = 0;
  for (bool u : up_) up += u ? 1 : 0;
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (!up_[i]) continue;
    if (nodes_[i]->NumAlive() != up) return false;
    for (const auto& name : down_names_) {
      auto m = nodes_[i]->Find(name);
      if (m &&
          (m->record.state == MemberState::kAlive || m->record.state == MemberState::kSuspect)) {
        return false;
      }
    }
  }
  return true;
}

nlohmann::json Simulator::Totals() const {
  std::uint64_t probes = 0, failed = 0, indirect = 0, raised = 0, refuted = 0, deaths = 0, sent = 0,
                syncs = 0;
  for (const auto& n : nodes_) {
    auto& s = n->stats();
    probes += s.probes_sent.load();
    failed += s.probes_failed.load();
    indirect += s.indirect_probes.load();
    raised += s.suspicions_raised.load();
    refuted += s.suspicions_refuted.load();
    deaths += s.deaths_declared.load();
    sent += s.messages_sent.load();
    syncs += s.push_pull_syncs.load();
  }
  return {{"nodes", nodes_.size()},
          {"simulatedSeconds", now_s()},
          {"probesSent", probes},
          {"probesFailed", failed},
          {"indirectProbes", indirect},
          {"suspicionsRaised", raised},
          {"suspicionsRefuted", refuted},
          {"deathsDeclared", deaths},
          {"messagesSent", sent},
          {"pushPullSyncs", syncs},
          {"networkDelivered", net_->delivered()},
          {"networkDropped", net_->dropped()},
          {"events", clock_->events_run()},
          {"falseDeaths", false_deaths_},
          {"falseSuspicions", false_suspicions_}};
}

nlohmann::json Simulator::MeasureFailure(int victim, core::Duration limit) {
  const double interval_s =
      std::chrono::duration<double>(options_.membership.probe_interval).count();
  Crash(victim);
  const double t0 = now_s();
  double first_suspect = -1;
  const bool complete = RunUntil(
      [&] {
        if (first_suspect < 0 && (CountSeeing(victim, MemberState::kSuspect) > 0 ||
                                  CountSeeing(victim, MemberState::kDead) > 0)) {
          first_suspect = now_s() - t0;
        }
        int up = 0;
        for (std::size_t i = 0; i < nodes_.size(); ++i) up += up_[i] ? 1 : 0;
        return CountSeeing(victim, MemberState::kDead) == up;
      },
      limit, std::chrono::milliseconds(20));
  const double seconds = now_s() - t0;
  return {{"seconds", seconds},
          {"rounds", seconds / interval_s},
          {"firstSuspicionSeconds", first_suspect},
          {"complete", complete}};
}

nlohmann::json Simulator::MeasureJoin(core::Duration limit) {
  const double interval_s =
      std::chrono::duration<double>(options_.membership.probe_interval).count();
  const double t0 = now_s();
  const int joiner = Join(0);
  const bool complete = RunUntil(
      [&] {
        int up = 0;
        for (std::size_t i = 0; i < nodes_.size(); ++i) up += up_[i] ? 1 : 0;
        return CountSeeing(joiner, MemberState::kAlive) == up - 1;
      },
      limit, std::chrono::milliseconds(20));
  const double seconds = now_s() - t0;
  return {{"seconds", seconds}, {"rounds", seconds / interval_s}, {"complete", complete}};
}

}  // namespace omnirelay::mesh
