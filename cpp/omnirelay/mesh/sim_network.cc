#include "omnirelay/mesh/sim_network.h"

#include <algorithm>

#include "omnirelay/mesh/membership.h"

namespace omnirelay::mesh {

core::TimerId SimClock::ScheduleAt(core::TimePoint when, std::function<void()> callback) {
  const auto id = next_id_++;
  if (when < now_) when = now_;
  heap_.push(Event{when, id});
  live_.emplace(id, std::move(callback));
  return id;
}

bool SimClock::Cancel(core::TimerId id) { return live_.erase(id) > 0; }

void SimClock::RunUntil(core::TimePoint until) {
  while (!heap_.empty() && heap_.top().when <= until) {
    const Event e = heap_.top();
    heap_.pop();
    auto it = live_.find(e.id);
    if (it == live_.end()) continue;  // cancelled
    auto fn = std::move(it->second);
    live_.erase(it);
    now_ = e.when;
    ++events_run_;
    fn();
  }
  if (until > now_) now_ = until;
}

class SimNetwork::Link final : public Transport {
 public:
  Link(std::weak_ptr<SimNetwork> net, std::string from)
      : net_(std::move(net)), from_(std::move(from)) {}
  void Send(const std::string&, const std::string& address, MessagePtr message) override {
    if (auto net = net_.lock()) net->Deliver(from_, address, std::move(message));
  }

 private:
  std::weak_ptr<SimNetwork> net_;
  std::string from_;
};

SimNetwork::SimNetwork(std::shared_ptr<core::Clock> clock, SimNetworkOptions options)
    : clock_(std::move(clock)), options_(options), rng_(options.seed) {}

std::shared_ptr<Transport> SimNetwork::Endpoint(const std::string& address) {
  return std::make_shared<Link>(weak_from_this(), address);
}

void SimNetwork::Attach(const std::string& address, std::weak_ptr<Membership> node) {
  nodes_[address] = std::move(node);
}

void SimNetwork::SetDown(const std::string& address, bool down) {
  if (down) {
    down_.insert(address);
  } else {
    down_.erase(address);
  }
}

void SimNetwork::Partition(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  for (const auto& x : a) side_[x] = 1;
  for (const auto& x : b) side_[x] = 2;
}

void SimNetwork::Heal() { side_.clear(); }

core::Duration SimNetwork::Latency(const std::string& from, const std::string& to) const {
  // A fixed latency per (unordered) link, derived from the seed and the pair.
  // Symmetric in (from, to) without building a string: this runs per message.
  const std::hash<std::string> hash;
  const auto a = hash(from), b = hash(to);
  auto h = (std::min(a, b) * 0x9E3779B97F4A7C15ull) ^ std::max(a, b) ^
           (options_.seed * 0xC2B2AE3D27D4EB4Full);
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  const auto span = (options_.max_latency - options_.min_latency).count();
  if (span <= 0) return options_.min_latency;
  return options_.min_latency +
         core::Duration(static_cast<std::int64_t>(h % static_cast<std::uint64_t>(span)));
}

void SimNetwork::Deliver(const std::string& from, const std::string& to, MessagePtr message) {
  auto cut = [&] {
    if (down_.count(from) || down_.count(to)) return true;
    if (side_.empty()) return false;
    auto a = side_.find(from);
    auto b = side_.find(to);
    return a != side_.end() && b != side_.end() && a->second != b->second;
  };
  if (cut()) {
    ++dropped_;
    return;
  }
  if (options_.loss > 0) {
    std::uniform_real_distribution<double> u(0, 1);
    if (u(rng_) < options_.loss) {
      ++dropped_;
      return;
    }
  }
  auto it = nodes_.find(to);
  if (it == nodes_.end()) {
    ++dropped_;
    return;
  }
  std::weak_ptr<Membership> target = it->second;
  std::weak_ptr<SimNetwork> self = weak_from_this();
  clock_->ScheduleAfter(Latency(from, to), [self, target, to, message = std::move(message)] {
    auto net = self.lock();
    if (!net) return;
    // A node that crashed while the message was in flight never gets it
    // (what a crashed node sent before crashing still arrives).
    if (net->down_.count(to)) {
      ++net->dropped_;
      return;
    }
    if (auto node = target.lock()) {
      ++net->delivered_;
      node->HandleMessage(*message);
    }
  });
}

}  // namespace omnirelay::mesh
