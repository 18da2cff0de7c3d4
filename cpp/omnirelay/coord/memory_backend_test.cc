// The in-memory store on a ManualClock: lease expiry happens exactly when the
// test moves time past it, and its effects (delete events, observe
// callbacks) have run when Advance() returns.
#include "omnirelay/coord/memory_backend.h"

#include <gtest/gtest.h>

#include "omnirelay/coord/leadership_store.h"

namespace omnirelay::coord {
namespace {

using namespace std::chrono_literals;

class ManualClockStoreTest : public ::testing::Test {
 protected:
  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  std::shared_ptr<MemoryBackend> backend_ = MemoryBackend::Create(clock_);
  LeadershipStore a_{backend_, clock_};
  LeadershipStore b_{backend_, clock_};
};

TEST_F(ManualClockStoreTest, LeaseExpiresExactlyAtItsTtl) {
  auto lease = a_.GrantLease(2s);
  ASSERT_TRUE(lease.ok());
  auto leader = a_.Campaign("global", lease->id, "a");
  ASSERT_TRUE(leader.ok());
  std::vector<std::string> seen;
  auto observe = b_.Observe("global", [&](const std::optional<Leadership>& current) {
    seen.push_back(current ? current->value : "-");
  });
  ASSERT_TRUE(observe.ok());
  EXPECT_EQ(seen, std::vector<std::string>{"a"});
  clock_->Advance(2s - 1ms);
  EXPECT_EQ(seen, std::vector<std::string>{"a"});
  EXPECT_TRUE(a_.FencedPut(*leader, "k", "v").ok());
  clock_->Advance(1ms);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "-"}));
  auto now = a_.Leader("global");
  ASSERT_TRUE(now.ok());
  EXPECT_FALSE(now->has_value());
  EXPECT_EQ(a_.FencedPut(*leader, "k", "v2").status().code(),
            core::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a_.fenced_writes_rejected(), 1);
}

TEST_F(ManualClockStoreTest, KeepAliveExtendsFromTheRenewal) {
  auto lease = a_.GrantLease(2s);
  ASSERT_TRUE(lease.ok());
  auto leader = a_.Campaign("global", lease->id, "a");
  ASSERT_TRUE(leader.ok());
  clock_->Advance(1500ms);
  auto renewed = a_.KeepAlive(lease->id);
  ASSERT_TRUE(renewed.ok());
  EXPECT_EQ(renewed->expires_at, clock_->Now() + 2s);
  EXPECT_EQ(a_.LeaseDeadline(lease->id), renewed->expires_at);
  clock_->Advance(1900ms);  // 3.4 s after the grant, 1.9 s after the renewal
  auto still = b_.Leader("global");
  ASSERT_TRUE(still.ok() && still->has_value());
  EXPECT_EQ((*still)->value, "a");
  clock_->Advance(100ms);
  auto gone = b_.Leader("global");
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(gone->has_value());
}

TEST_F(ManualClockStoreTest, LocalDeadlineRefusesWritesBeforeTheStoreExpiresTheLease) {
  // The holder's deadline is counted from when it *sent* the renewal; if the
  // store saw the renewal later, the store's expiry is later still. Between
  // the two the holder must already refuse to act.
  auto lease = a_.GrantLease(2s);
  ASSERT_TRUE(lease.ok());
  auto leader = a_.Campaign("global", lease->id, "a");
  ASSERT_TRUE(leader.ok());
  ASSERT_TRUE(b_.KeepAlive(lease->id).ok());  // another client renews at t=0 too
  clock_->Advance(1s);
  ASSERT_TRUE(b_.KeepAlive(lease->id).ok());  // store now expires at t=3s; a's deadline is t=2s
  clock_->Advance(1s);
  EXPECT_EQ(a_.FencedPut(*leader, "k", "v").status().code(), core::StatusCode::kFailedPrecondition);
  auto still = b_.Leader("global");
  ASSERT_TRUE(still.ok() && still->has_value()) << "the store still holds the key";
}

TEST_F(ManualClockStoreTest, UnreachableStoreFailsCallsAndLeasesStillLapse) {
  auto lease = a_.GrantLease(2s);
  ASSERT_TRUE(lease.ok());
  auto leader = a_.Campaign("global", lease->id, "a");
  ASSERT_TRUE(leader.ok());
  backend_->SetUnavailable(true);
  auto renewed = a_.KeepAlive(lease->id);
  EXPECT_EQ(renewed.status().code(), core::StatusCode::kUnavailable);
  clock_->Advance(2s);
  EXPECT_EQ(a_.FencedPut(*leader, "k", "v").status().code(), core::StatusCode::kFailedPrecondition)
      << "past the lease deadline the holder refuses locally, store or no store";
  backend_->SetUnavailable(false);
  auto after = a_.Leader("global");
  ASSERT_TRUE(after.ok());
  EXPECT_FALSE(after->has_value());
}

}  // namespace
}  // namespace omnirelay::coord
