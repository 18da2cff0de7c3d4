// Membership under real threads without gRPC (Debian's gRPC is not
// instrumented, so gRPC tests stay out of the TSan stage): the system
// clock's timer thread drives the protocol, a delivery thread hands messages
// over, and the test thread reads views concurrently. Runs under TSan in CI.
#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <set>
#include <thread>

#include "omnirelay/mesh/membership.h"

namespace omnirelay::mesh {
namespace {

// Delivers every message on one thread of its own, in send order.
class ThreadedNetwork {
 public:
  ThreadedNetwork() : thread_([this] { Run(); }) {}
  ~ThreadedNetwork() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Attach(const std::string& address, std::weak_ptr<Membership> node) {
    std::lock_guard lock(mu_);
    nodes_[address] = std::move(node);
  }
  void SetDown(const std::string& address) {
    std::lock_guard lock(mu_);
    down_.insert(address);
  }
  class Link : public Transport {
   public:
    explicit Link(ThreadedNetwork* net) : net_(net) {}
    void Send(const std::string&, const std::string& address, MessagePtr message) override {
      std::lock_guard lock(net_->mu_);
      net_->queue_.emplace_back(address, std::move(message));
      net_->cv_.notify_one();
    }

   private:
    ThreadedNetwork* net_;
  };

 private:
  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      auto [address, message] = std::move(queue_.front());
      queue_.pop_front();
      if (down_.count(address)) continue;
      auto it = nodes_.find(address);
      if (it == nodes_.end()) continue;
      auto node = it->second.lock();
      lock.unlock();
      if (node) node->HandleMessage(*message);
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::string, MessagePtr>> queue_;
  std::map<std::string, std::weak_ptr<Membership>> nodes_;
  std::set<std::string> down_;
  bool stop_ = false;
  std::thread thread_;
};

TEST(MembershipConcurrencyTest, TimersDeliveriesAndReadersOnSeparateThreads) {
  auto clock = std::make_shared<core::SystemClock>();
  ThreadedNetwork net;
  std::vector<std::shared_ptr<Membership>> nodes;
  std::atomic<int> events{0};
  for (int i = 0; i < 4; ++i) {
    Options o = Options::Test();
    o.seed = static_cast<std::uint64_t>(i);
    // (not "n" + to_string: GCC 12's -O3 -Wrestrict false positive)
    std::string id(1, 'n');
    id.append(std::to_string(i));
    auto node = Membership::Create(LocalIdentity{id, id, {}}, o, clock,
                                   std::make_shared<ThreadedNetwork::Link>(&net));
    node->AddListener([&events](const MemberEvent&) { events.fetch_add(1); });
    net.Attach(id, node);
    nodes.push_back(node);
  }
  for (int i = 0; i < 4; ++i)
    nodes[static_cast<std::size_t>(i)]->Start(i == 0 ? std::vector<std::string>{}
                                                     : std::vector<std::string>{"n0"});
  auto all = [&](std::size_t n) {
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (i == 3 && n == 3) continue;
      if (nodes[i]->NumAlive() != n) return false;
    }
    return true;
  };
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  bool converged = false;
  while (std::chrono::steady_clock::now() < end && !converged) {
    for (auto& n : nodes) (void)n->ToJson();  // readers race the protocol threads
    converged = all(4);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(converged);
  nodes[3]->Stop();
  net.SetDown("n3");
  bool detected = false;
  const auto end2 = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < end2 && !detected) {
    detected = true;
    for (int i = 0; i < 3; ++i) {
      auto m = nodes[static_cast<std::size_t>(i)]->Find("n3");
      detected = detected && m && m->record.state == MemberState::kDead;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(detected);
  EXPECT_GT(events.load(), 0);
  for (auto& n : nodes) n->Stop();
}

}  // namespace
}  // namespace omnirelay::mesh
