// The peer pool's dynamic list (SetPeers, attachments, Wake) without any
// network: attachments are plain objects that count themselves, so the test
// sees exactly when an outbound's channel would be made and dropped.
// Labelled `tsan`: the concurrent test races SetPeers against Acquire/Release.
#include "omnirelay/transport/peer_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <thread>

#include "omnirelay/core/metrics.h"
#include "omnirelay/peers/chooser.h"

namespace omnirelay::transport {
namespace {

// Stands in for a grpc::Channel: counts live instances and carries a magic
// value a use-after-free would destroy.
struct FakeChannel {
  static std::atomic<int> live;
  static std::atomic<int> made;
  explicit FakeChannel(std::string a) : address(std::move(a)) {
    live.fetch_add(1);
    made.fetch_add(1);
  }
  ~FakeChannel() {
    magic = 0;
    live.fetch_sub(1);
  }
  std::string address;
  std::atomic<std::uint64_t> magic{0xC0FFEE};
};
std::atomic<int> FakeChannel::live{0};
std::atomic<int> FakeChannel::made{0};

class PeerPoolDynamicTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeChannel::live = 0;
    FakeChannel::made = 0;
  }
  static std::shared_ptr<PeerPool> Pool(std::vector<std::string> addresses = {},
                                        PeerPoolOptions options = {}) {
    options.breaker_consecutive_failures = 0;
    if (options.chooser == "fewest-pending" && !options.chooser_factory) {
      options.chooser = "round-robin";
    }
    auto pool = MakeCoordinatorPeerPool(std::move(addresses), std::move(options),
                                        core::SystemClock::Shared(),
                                        std::make_shared<core::MetricsRegistry>());
    EXPECT_TRUE(pool.ok()) << pool.status();
    (*pool)->SetAttachmentFactory([](const std::string& address) {
      return std::shared_ptr<void>(std::make_shared<FakeChannel>(address));
    });
    return *pool;
  }
  static const FakeChannel& Channel(const PeerLease& lease) {
    return *static_cast<const FakeChannel*>(lease.peer->attachment.get());
  }
};

TEST_F(PeerPoolDynamicTest, StaticPoolKeepsIndexAndAttachesEveryPeer) {
  auto pool = Pool({"127.0.0.1:1", "127.0.0.1:2"});
  EXPECT_EQ(FakeChannel::live.load(), 2);
  std::set<size_t> indexes;
  for (int i = 0; i < 4; ++i) {
    auto lease = pool->Acquire({}, std::nullopt);
    ASSERT_TRUE(lease.ok()) << lease.status();
    indexes.insert(lease->index);
    EXPECT_EQ(pool->addresses()[lease->index], lease->peer->address);
    EXPECT_EQ(Channel(*lease).address, lease->peer->address);
    pool->Release(*lease, absl::StatusCode::kOk);
  }
  EXPECT_EQ(indexes, (std::set<size_t>{0, 1}));
}

TEST_F(PeerPoolDynamicTest, EmptyPoolIsUnavailableUntilPeersArrive) {
  auto pool = Pool();
  auto none = pool->Acquire({}, std::nullopt);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(pool->SetPeers({{"a", "127.0.0.1:1"}}).ok());
  auto lease = pool->Acquire({}, std::nullopt);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->peer->id, "a");
  EXPECT_EQ(lease->index, PoolPeer::kNoIndex);
  EXPECT_TRUE(pool->addresses().empty());
  pool->Release(*lease, absl::StatusCode::kOk);
}

TEST_F(PeerPoolDynamicTest, KeptPeersKeepTheirAttachmentAndNewAddressesGetANewOne) {
  auto pool = Pool();
  ASSERT_TRUE(pool->SetPeers({{"a", "127.0.0.1:1"}, {"b", "127.0.0.1:2"}}).ok());
  EXPECT_EQ(FakeChannel::made.load(), 2);
  ASSERT_TRUE(
      pool->SetPeers({{"a", "127.0.0.1:1"}, {"b", "127.0.0.1:2"}, {"c", "127.0.0.1:3"}}).ok());
  EXPECT_EQ(FakeChannel::made.load(), 3);  // only c is new
  ASSERT_TRUE(pool->SetPeers({{"a", "127.0.0.1:9"}, {"c", "127.0.0.1:3"}}).ok());
  EXPECT_EQ(FakeChannel::made.load(), 4);  // a moved: a new channel
  EXPECT_EQ(FakeChannel::live.load(), 2);  // b's and a's old channel are gone
  EXPECT_EQ(pool->Peers(), (std::vector<PeerEndpoint>{{"a", "127.0.0.1:9"}, {"c", "127.0.0.1:3"}}));
  EXPECT_FALSE(pool->SetPeers({{"a", "x:1"}, {"a", "x:2"}}).ok());
}

TEST_F(PeerPoolDynamicTest, ALeaseOnARemovedPeerCompletesAndHoldsItsChannelUntilReleased) {
  auto pool = Pool();
  ASSERT_TRUE(pool->SetPeers({{"a", "127.0.0.1:1"}}).ok());
  auto lease = pool->Acquire({}, std::nullopt);
  ASSERT_TRUE(lease.ok());
  std::weak_ptr<void> channel = lease->peer->attachment;
  ASSERT_TRUE(pool->SetPeers({{"b", "127.0.0.1:2"}}).ok());
  // a is no longer chosen...
  for (int i = 0; i < 5; ++i) {
    auto next = pool->Acquire({}, std::nullopt);
    ASSERT_TRUE(next.ok());
    EXPECT_EQ(next->peer->id, "b");
    pool->Release(*next, absl::StatusCode::kOk);
  }
  // ...but the call on it still has its channel.
  EXPECT_FALSE(channel.expired());
  EXPECT_EQ(Channel(*lease).magic.load(), 0xC0FFEEu);
  pool->Release(*lease, absl::StatusCode::kOk);
  lease->peer.reset();  // the outbound's call object going away
  EXPECT_TRUE(channel.expired());
  EXPECT_EQ(FakeChannel::live.load(), 1);
}

TEST_F(PeerPoolDynamicTest, ConcurrentAcquireWhileTheListChanges) {
  auto pool = Pool();
  const std::vector<std::vector<PeerEndpoint>> lists = {
      {{"a", "h:1"}, {"b", "h:2"}, {"c", "h:3"}},
      {{"b", "h:2"}, {"d", "h:4"}},
      {{"a", "h:1"}, {"d", "h:4"}, {"e", "h:5"}},
      {{"e", "h:5"}},
  };
  ASSERT_TRUE(pool->SetPeers(lists[0]).ok());
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> leased{0};
  std::atomic<std::uint64_t> unexpected{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < 200000 && !stop.load(); ++i) {
        auto lease = pool->Acquire({}, std::nullopt);
        if (!lease.ok()) {
          // Only the list's own "changed under you" signal is acceptable.
          if (lease.status().code() != absl::StatusCode::kUnavailable) unexpected.fetch_add(1);
          continue;
        }
        const auto* channel = static_cast<const FakeChannel*>(lease->peer->attachment.get());
        if (channel == nullptr || channel->magic.load() != 0xC0FFEE ||
            channel->address != lease->peer->address) {
          unexpected.fetch_add(1);
        }
        leased.fetch_add(1, std::memory_order_relaxed);
        pool->Release(*lease, absl::StatusCode::kOk);
      }
    });
  }
  for (int round = 0; round < 400; ++round) {
    ASSERT_TRUE(pool->SetPeers(lists[round % lists.size()]).ok());
    std::this_thread::yield();
  }
  ASSERT_TRUE(pool->SetPeers(lists[3]).ok());
  stop = true;
  for (auto& t : callers) t.join();
  EXPECT_EQ(unexpected.load(), 0u);
  EXPECT_GT(leased.load(), 0u);
  // Every lease is gone: only the final list's channel is left.
  EXPECT_EQ(FakeChannel::live.load(), 1);
  auto lease = pool->Acquire({}, std::nullopt);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(lease->peer->id, "e");
  pool->Release(*lease, absl::StatusCode::kOk);
}

// A chooser whose answer lives outside the snapshot (like the leader
// chooser): picks the peer named by `target`, none while it is empty.
class NamedChooser final : public peers::PeerChooser {
 public:
  explicit NamedChooser(std::shared_ptr<std::string> target) : target_(std::move(target)) {}
  std::string_view name() const override { return "named"; }
  int Pick(const peers::PeerSnapshot& snapshot, const core::RequestMeta&) override {
    std::lock_guard lock(mu_);
    auto it = snapshot.index_by_id.find(*target_);
    return it == snapshot.index_by_id.end() ? -1 : it->second;
  }
  void ProbeOrder(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta, int,
                  std::vector<int>* order) override {
    order->clear();
    if (int i = Pick(snapshot, meta); i >= 0) order->push_back(i);
  }
  void Set(std::string value) {
    std::lock_guard lock(mu_);
    *target_ = std::move(value);
  }

 private:
  std::mutex mu_;
  std::shared_ptr<std::string> target_;
};

TEST_F(PeerPoolDynamicTest, ChooserFactoryExhaustionAsUnavailableAndWake) {
  auto target = std::make_shared<std::string>();
  NamedChooser* chooser = nullptr;
  PeerPoolOptions options;
  options.exhaustion_is_unavailable = true;
  options.chooser_factory = [&]() -> std::unique_ptr<peers::PeerChooser> {
    auto made = std::make_unique<NamedChooser>(target);
    chooser = made.get();
    return made;
  };
  auto pool = Pool({}, options);
  ASSERT_NE(chooser, nullptr);
  EXPECT_EQ(pool->Snapshot()["chooser"], "named");
  ASSERT_TRUE(pool->SetPeers({{"a", "h:1"}, {"b", "h:2"}}).ok());
  // Nobody named: no fallback to another peer, and the failure is retryable.
  auto none = pool->Acquire({}, std::nullopt);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  // A waiting call (it has a deadline) is woken by Wake() once the chooser
  // has an answer, long before its deadline.
  core::RequestMeta meta;
  meta.time_to_live = std::chrono::seconds(30);
  auto waiter = std::async(std::launch::async, [&] { return pool->Acquire(meta, std::nullopt); });
  ASSERT_EQ(waiter.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
  chooser->Set("b");
  pool->Wake();
  ASSERT_EQ(waiter.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  auto lease = waiter.get();
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->peer->id, "b");
  pool->Release(*lease, absl::StatusCode::kOk);
}

}  // namespace
}  // namespace omnirelay::transport
