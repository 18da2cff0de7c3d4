// One conformance suite run against every backend: in-memory, SQLite (two
// connections to one file) and etcd (a real /usr/bin/etcd started by the
// test). Each test builds "nodes" — LeadershipStores that share one store —
// and checks the LeadershipStore contract through them.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <thread>

#include "omnirelay/coord/etcd_backend.h"
#include "omnirelay/coord/etcd_process.h"
#include "omnirelay/coord/leadership_store.h"
#include "omnirelay/coord/memory_backend.h"
#include "omnirelay/coord/sqlite_backend.h"

namespace omnirelay::coord {
namespace {

using namespace std::chrono_literals;

// One etcd for the whole binary, started on first use; its destructor (at
// exit) kills it and removes its temp dir.
testing::EtcdProcess& SharedEtcd() {
  static std::unique_ptr<testing::EtcdProcess> etcd = [] {
    auto process = std::make_unique<testing::EtcdProcess>();
    auto status = process->Start();
    if (!status.ok()) {
      ADD_FAILURE() << "cannot start etcd: " << status;
    }
    return process;
  }();
  return *etcd;
}

// Polls `condition` every 10 ms for up to `limit` (generous: the host is shared).
template <typename F>
bool Eventually(F condition, std::chrono::milliseconds limit = 15s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

class ConformanceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    prefix_ = "/omnirelay-test/" + std::to_string(getpid()) + "/" + info->name() + "/";
    for (auto& c : prefix_) {
      if (c == '\n' || c == ' ') c = '_';
    }
    if (kind() == "memory") {
      memory_ = MemoryBackend::Create(core::SystemClock::Shared());
    } else if (kind() == "sqlite") {
      dir_ = std::filesystem::temp_directory_path() /
             ("omnirelay-coord-" + std::to_string(getpid()) + "-" + std::to_string(counter_++));
      std::filesystem::create_directories(dir_);
    } else {
      ASSERT_GT(SharedEtcd().pid(), 0) << "etcd is not running";
    }
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  const std::string& kind() const { return GetParam(); }

  // A new client of the shared store (a "node").
  std::unique_ptr<LeadershipStore> NewNode() {
    std::shared_ptr<KvBackend> backend;
    if (kind() == "memory") {
      backend = memory_;
    } else if (kind() == "sqlite") {
      SqliteOptions options;
      options.path = (dir_ / "coord.db").string();
      options.max_clock_skew = 50ms;
      options.poll_interval = 10ms;
      auto opened = SqliteBackend::Open(options, core::SystemClock::Shared());
      EXPECT_TRUE(opened.ok()) << opened.status();
      backend = *opened;
    } else {
      EtcdOptions options;
      options.endpoints = {SharedEtcd().endpoint()};
      auto opened = EtcdBackend::Open(options);
      EXPECT_TRUE(opened.ok()) << opened.status();
      backend = *opened;
    }
    return std::make_unique<LeadershipStore>(backend, core::SystemClock::Shared(), prefix_);
  }

  Lease MustGrant(LeadershipStore& node, core::Duration ttl = 10s) {
    auto lease = node.GrantLease(ttl);
    EXPECT_TRUE(lease.ok()) << lease.status();
    return lease.ok() ? *lease : Lease{};
  }

  std::string prefix_;
  std::shared_ptr<MemoryBackend> memory_;
  std::filesystem::path dir_;
  static inline int counter_ = 0;
};

TEST_P(ConformanceTest, LeaseGrantKeepAliveRevoke) {
  auto node = NewNode();
  const Lease lease = MustGrant(*node, 5s);
  EXPECT_GE(lease.ttl, 5s);
  EXPECT_GT(lease.expires_at, core::SystemClock::Shared()->Now());
  auto renewed = node->KeepAlive(lease.id);
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_GE(renewed->expires_at, lease.expires_at);
  ASSERT_TRUE(node->RevokeLease(lease.id).ok());
  EXPECT_EQ(node->KeepAlive(lease.id).status().code(), core::StatusCode::kNotFound);
  EXPECT_TRUE(node->RevokeLease(lease.id).ok()) << "revoking twice is fine";
}

TEST_P(ConformanceTest, UncontestedCampaignWinsAndTokensOnlyGrow) {
  auto node = NewNode();
  const Lease lease = MustGrant(*node);
  auto first = node->Campaign("global", lease.id, "node-a");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->value, "node-a");
  EXPECT_GT(first->fencing_token, 0);
  auto leader = node->Leader("global");
  ASSERT_TRUE(leader.ok() && leader->has_value());
  EXPECT_EQ((*leader)->fencing_token, first->fencing_token);
  ASSERT_TRUE(node->Resign(*first).ok());
  leader = node->Leader("global");
  ASSERT_TRUE(leader.ok());
  EXPECT_FALSE(leader->has_value());
  auto second = node->Campaign("global", lease.id, "node-a");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(second->fencing_token, first->fencing_token);
}

TEST_P(ConformanceTest, SecondCandidateWaitsUntilTheLeaderResigns) {
  auto a = NewNode();
  auto b = NewNode();
  const Lease lease_a = MustGrant(*a);
  const Lease lease_b = MustGrant(*b);
  auto leader_a = a->Campaign("region/west", lease_a.id, "a");
  ASSERT_TRUE(leader_a.ok()) << leader_a.status();
  auto pending =
      std::async(std::launch::async, [&] { return b->Campaign("region/west", lease_b.id, "b"); });
  EXPECT_EQ(pending.wait_for(300ms), std::future_status::timeout) << "b must wait for a";
  ASSERT_TRUE(a->Resign(*leader_a).ok());
  ASSERT_EQ(pending.wait_for(15s), std::future_status::ready);
  auto leader_b = pending.get();
  ASSERT_TRUE(leader_b.ok()) << leader_b.status();
  EXPECT_EQ(leader_b->value, "b");
  EXPECT_GT(leader_b->fencing_token, leader_a->fencing_token);
}

TEST_P(ConformanceTest, CancelledCampaignWithdrawsTheCandidacy) {
  auto a = NewNode();
  auto b = NewNode();
  const Lease lease_a = MustGrant(*a);
  const Lease lease_b = MustGrant(*b);
  auto leader_a = a->Campaign("global", lease_a.id, "a");
  ASSERT_TRUE(leader_a.ok());
  std::stop_source stop;
  auto pending = std::async(
      std::launch::async, [&] { return b->Campaign("global", lease_b.id, "b", stop.get_token()); });
  std::this_thread::sleep_for(100ms);
  stop.request_stop();
  ASSERT_EQ(pending.wait_for(15s), std::future_status::ready);
  EXPECT_EQ(pending.get().status().code(), core::StatusCode::kCancelled);
  ASSERT_TRUE(a->Resign(*leader_a).ok());
  auto leader = a->Leader("global");
  ASSERT_TRUE(leader.ok());
  EXPECT_FALSE(leader->has_value()) << "b's withdrawn candidacy must not become leader";
}

TEST_P(ConformanceTest, TryCampaignDoesNotQueueBehindTheLeader) {
  auto a = NewNode();
  auto b = NewNode();
  const Lease lease_a = MustGrant(*a);
  const Lease lease_b = MustGrant(*b);
  auto won = a->TryCampaign("shard/orders/7", lease_a.id, "a");
  ASSERT_TRUE(won.ok() && won->has_value()) << won.status();
  auto lost = b->TryCampaign("shard/orders/7", lease_b.id, "b");
  ASSERT_TRUE(lost.ok()) << lost.status();
  EXPECT_FALSE(lost->has_value());
  ASSERT_TRUE(a->Resign(**won).ok());
  auto leader = a->Leader("shard/orders/7");
  ASSERT_TRUE(leader.ok());
  EXPECT_FALSE(leader->has_value());
}

TEST_P(ConformanceTest, LeaseExpiryHandsLeadershipOver) {
  auto a = NewNode();
  auto b = NewNode();
  const Lease lease_a = MustGrant(*a, 1s);  // never renewed
  const Lease lease_b = MustGrant(*b, 30s);
  auto leader_a = a->Campaign("global", lease_a.id, "a");
  ASSERT_TRUE(leader_a.ok()) << leader_a.status();
  const auto start = std::chrono::steady_clock::now();
  auto leader_b = b->Campaign("global", lease_b.id, "b");
  ASSERT_TRUE(leader_b.ok()) << leader_b.status();
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GT(leader_b->fencing_token, leader_a->fencing_token);
  EXPECT_LT(waited, 15s);
  // The expired leader's writes are refused, locally and by the store.
  auto stale = a->FencedPut(*leader_a, "config", "from-a");
  EXPECT_EQ(stale.status().code(), core::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->fenced_writes_rejected(), 1);
  EXPECT_EQ(a->KeepAlive(lease_a.id).status().code(), core::StatusCode::kNotFound);
}

TEST_P(ConformanceTest, StoreRejectsStaleFencingTokenEvenWithALiveLease) {
  auto a = NewNode();
  auto b = NewNode();
  const Lease lease_a = MustGrant(*a);
  const Lease lease_b = MustGrant(*b);
  auto leader_a = a->Campaign("global", lease_a.id, "a");
  ASSERT_TRUE(leader_a.ok());
  auto written = a->FencedPut(*leader_a, "shards/map", "v1");
  ASSERT_TRUE(written.ok()) << written.status();
  // a loses leadership (as after a promotion) but its lease is still live,
  // so only the store's conditional write can stop it.
  ASSERT_TRUE(a->Resign(*leader_a).ok());
  auto leader_b = b->Campaign("global", lease_b.id, "b");
  ASSERT_TRUE(leader_b.ok());
  auto stale = a->FencedPut(*leader_a, "shards/map", "v-stale");
  EXPECT_EQ(stale.status().code(), core::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core::ErrorCode(stale.status()), "stale-fencing-token");
  EXPECT_EQ(a->fenced_writes_rejected(), 1);
  EXPECT_EQ(a->Proclaim(*leader_a, "zombie").code(), core::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->fenced_writes_rejected(), 2);
  auto fresh = b->FencedPut(*leader_b, "shards/map", "v2", *written);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  auto value = b->Get("shards/map");
  ASSERT_TRUE(value.ok() && value->has_value());
  EXPECT_EQ((*value)->value, "v2");
  // A CAS mismatch under a current leadership is not a fencing rejection.
  auto mismatch = b->FencedPut(*leader_b, "shards/map", "v3", *written);
  EXPECT_EQ(mismatch.status().code(), core::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core::ErrorCode(mismatch.status()), "revision-mismatch");
  EXPECT_EQ(b->fenced_writes_rejected(), 0);
}

TEST_P(ConformanceTest, ObserveReportsEveryLeaderChangeInOrder) {
  auto a = NewNode();
  auto b = NewNode();
  auto watcher = NewNode();
  std::mutex mu;
  std::vector<std::string> seen;  // value, or "-" for no leader
  auto observe = watcher->Observe("region/east", [&](const std::optional<Leadership>& leader) {
    std::lock_guard lock(mu);
    seen.push_back(leader ? leader->value : "-");
  });
  ASSERT_TRUE(observe.ok()) << observe.status();
  auto snapshot = [&] {
    std::lock_guard lock(mu);
    return seen;
  };
  EXPECT_EQ(snapshot(), std::vector<std::string>{"-"});
  const Lease lease_a = MustGrant(*a);
  const Lease lease_b = MustGrant(*b);
  auto leader_a = a->Campaign("region/east", lease_a.id, "a");
  ASSERT_TRUE(leader_a.ok());
  ASSERT_TRUE(Eventually([&] { return snapshot().size() == 2; }));
  ASSERT_TRUE(a->Proclaim(*leader_a, "a-v2").ok());
  ASSERT_TRUE(Eventually([&] { return snapshot().size() == 3; }));
  ASSERT_TRUE(a->Resign(*leader_a).ok());
  ASSERT_TRUE(Eventually([&] { return snapshot().size() == 4; }));
  auto leader_b = b->Campaign("region/east", lease_b.id, "b");
  ASSERT_TRUE(leader_b.ok());
  ASSERT_TRUE(Eventually([&] { return snapshot().size() == 5; }));
  EXPECT_EQ(snapshot(), (std::vector<std::string>{"-", "a", "a-v2", "-", "b"}));
  observe->Reset();
}

TEST_P(ConformanceTest, CompareAndSwapOnRevision) {
  auto node = NewNode();
  auto created = node->CompareAndSwap("shards/orders", "v1", 0);
  ASSERT_TRUE(created.ok()) << created.status();
  auto again = node->CompareAndSwap("shards/orders", "v1-dup", 0);
  EXPECT_EQ(again.status().code(), core::StatusCode::kFailedPrecondition);
  auto updated = node->CompareAndSwap("shards/orders", "v2", *created);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_GT(*updated, *created);
  auto stale = node->CompareAndSwap("shards/orders", "v3", *created);
  EXPECT_EQ(stale.status().code(), core::StatusCode::kFailedPrecondition);
  auto value = node->Get("shards/orders");
  ASSERT_TRUE(value.ok() && value->has_value());
  EXPECT_EQ((*value)->value, "v2");
  EXPECT_EQ((*value)->mod_revision, *updated);
  EXPECT_EQ((*value)->create_revision, *created);
  EXPECT_EQ((*value)->version, 2);
  auto missing = node->Get("shards/none");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  auto listed = node->List("shards/");
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ(listed->front().key, "shards/orders");
}

TEST_P(ConformanceTest, WatchByPrefixSeesLaterWritesOnly) {
  auto writer = NewNode();
  auto watcher = NewNode();
  ASSERT_TRUE(writer->CompareAndSwap("maps/before", "x", 0).ok());
  std::mutex mu;
  std::vector<std::string> keys;
  auto watch = watcher->Watch("maps/", [&](const std::vector<WatchEvent>& events) {
    std::lock_guard lock(mu);
    for (const auto& event : events) keys.push_back(event.kv.key + "=" + event.kv.value);
  });
  ASSERT_TRUE(watch.ok()) << watch.status();
  ASSERT_TRUE(writer->CompareAndSwap("maps/a", "1", 0).ok());
  ASSERT_TRUE(writer->CompareAndSwap("other/b", "2", 0).ok());
  ASSERT_TRUE(writer->CompareAndSwap("maps/c", "3", 0).ok());
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return keys.size() >= 2;
  }));
  std::this_thread::sleep_for(50ms);
  std::lock_guard lock(mu);
  EXPECT_EQ(keys, (std::vector<std::string>{"maps/a=1", "maps/c=3"}));
}

TEST_P(ConformanceTest, InvalidScopesAreRejected) {
  auto node = NewNode();
  const Lease lease = MustGrant(*node);
  for (std::string_view scope :
       {"", "globalx", "region/", "region/a/b", "shard/x", "shard/x/1/2", "region/we st"}) {
    EXPECT_EQ(node->Campaign(scope, lease.id, "n").status().code(),
              core::StatusCode::kInvalidArgument)
        << scope;
  }
  EXPECT_TRUE(LeadershipStore::ValidateScope("shard/orders/12").ok());
}

#ifdef COORD_WITHOUT_ETCD
INSTANTIATE_TEST_SUITE_P(Backends, ConformanceTest, ::testing::Values("memory", "sqlite"),
                         [](const auto& info) { return info.param; });
#else
INSTANTIATE_TEST_SUITE_P(Backends, ConformanceTest, ::testing::Values("memory", "sqlite", "etcd"),
                         [](const auto& info) { return info.param; });
#endif

// --- backend-specific guarantees ---

TEST(SqliteStore, FencingTokensStayMonotonicAcrossReopen) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("omnirelay-coord-reopen-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  StoreOptions options;
  options.kind = "sqlite";
  options.path = (dir / "coord.db").string();
  std::int64_t first_token = 0;
  {
    auto store = LeadershipStore::Open(options);
    ASSERT_TRUE(store.ok()) << store.status();
    auto lease = (*store)->GrantLease(10s);
    ASSERT_TRUE(lease.ok());
    auto leader = (*store)->Campaign("global", lease->id, "a");
    ASSERT_TRUE(leader.ok());
    first_token = leader->fencing_token;
    ASSERT_TRUE((*store)->Resign(*leader).ok());
  }
  auto store = LeadershipStore::Open(options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto lease = (*store)->GrantLease(10s);
  ASSERT_TRUE(lease.ok());
  auto leader = (*store)->Campaign("global", lease->id, "a");
  ASSERT_TRUE(leader.ok());
  EXPECT_GT(leader->fencing_token, first_token);
  store->reset();
  std::filesystem::remove_all(dir);
}

TEST(SqliteStore, MisSetPathFailsFastWithTheFileName) {
  StoreOptions options;
  options.kind = "sqlite";
  options.path = "/nonexistent-dir-omnirelay/coord.db";
  auto store = LeadershipStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), core::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("/nonexistent-dir-omnirelay/coord.db"),
            std::string::npos);
}

#ifndef COORD_WITHOUT_ETCD
TEST(EtcdStore, MisSetAddressFailsFastNamingTheEndpoint) {
  StoreOptions options;
  options.kind = "etcd";
  const int port = testing::FreePort();  // nothing listens there
  options.endpoints = {"127.0.0.1:" + std::to_string(port)};
  options.dial_timeout = 500ms;
  const auto start = std::chrono::steady_clock::now();
  auto store = LeadershipStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_EQ(store.status().code(), core::StatusCode::kUnavailable);
  EXPECT_NE(store.status().message().find(std::to_string(port)), std::string::npos);
}

TEST(EtcdStore, FencingTokensStayMonotonicAcrossAnEtcdRestart) {
  testing::EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start().ok());
  StoreOptions options;
  options.kind = "etcd";
  options.endpoints = {etcd.endpoint()};
  std::int64_t first_token = 0;
  {
    auto store = LeadershipStore::Open(options);
    ASSERT_TRUE(store.ok()) << store.status();
    auto lease = (*store)->GrantLease(10s);
    ASSERT_TRUE(lease.ok());
    auto leader = (*store)->Campaign("global", lease->id, "a");
    ASSERT_TRUE(leader.ok());
    first_token = leader->fencing_token;
    ASSERT_TRUE((*store)->RevokeLease(lease->id).ok());
  }
  etcd.Stop();
  ASSERT_TRUE(etcd.Start().ok());
  auto store = LeadershipStore::Open(options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto lease = (*store)->GrantLease(10s);
  ASSERT_TRUE(lease.ok());
  auto leader = (*store)->Campaign("global", lease->id, "a");
  ASSERT_TRUE(leader.ok());
  EXPECT_GT(leader->fencing_token, first_token);
}
#endif  // COORD_WITHOUT_ETCD

}  // namespace
}  // namespace omnirelay::coord
