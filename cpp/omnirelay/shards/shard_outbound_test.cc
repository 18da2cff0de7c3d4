// ShardOutbound without the network: a real dispatcher with a shard route
// and a local procedure; calls that this node owns are served locally with
// the shard headers, forwarded calls it does not own are refused, and a
// forwarded call whose sender holds a newer version waits (clock timers) for
// that version and is then served here.
#include "omnirelay/shards/shard_outbound.h"

#include <gtest/gtest.h>

#include "omnirelay/shards/strategy.h"

namespace omnirelay::shards {
namespace {

using namespace std::chrono_literals;

class ShardOutboundTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NamespaceOptions ns;
    ns.spec.ns = "users";
    ns.spec.shard_count = 16;
    ns.spec.replicas = 1;
    ns.service = "users.v1.Users";
    ns.local_service = "local.Users";
    router_ = std::make_shared<ShardRouter>(
        "n1", std::vector<NamespaceOptions>{ns}, holder_, [](std::string_view) { return true; },
        clock_);
    dispatcher_ = std::make_shared<dispatcher::Dispatcher>("node");
    dispatcher::Procedure echo;
    echo.service = "local.Users";
    echo.name = "Get";
    echo.unary = [this](dispatcher::Request request, dispatcher::UnaryCallback done) {
      ++served_;
      done(dispatcher::Response{.headers = {}, .body = "served:" + request.body});
    };
    ASSERT_TRUE(dispatcher_->Register(echo).ok());
    outbound_ = std::make_shared<ShardOutbound>(ShardOutboundOptions{.ns = "users",
                                                                     .local_service = "local.Users",
                                                                     .peer_addresses = {},
                                                                     .tls = std::nullopt},
                                                router_, dispatcher_, clock_, metrics_);
    ASSERT_TRUE(dispatcher_->AddOutbound("shards.users", outbound_).ok());
    ASSERT_TRUE(dispatcher_->AddRoute({"users.v1.Users/", "shards.users"}).ok());
    ASSERT_TRUE(dispatcher_->Start().ok());
  }
  void TearDown() override { dispatcher_->Stop(); }

  // A map in which `owner` owns every shard (one member besides a spare).
  void Install(std::int64_t version, const std::string& owner) {
    auto map = *ComputeShardMap(router_->Find("users")->spec, {{owner, owner + ":1", "", ""}});
    map.version = version;
    ASSERT_TRUE(holder_->Offer(std::make_shared<const ShardMap>(std::move(map))));
  }
  absl::StatusOr<dispatcher::Response> Call(
      std::string key, std::vector<std::pair<std::string, std::string>> headers) {
    dispatcher::Request request;
    request.meta.service = "users.v1.Users";
    request.meta.procedure = "Get";
    request.meta.shard_key = std::move(key);
    for (auto& [k, v] : headers) request.meta.headers.Set(k, v);
    request.body = "b";
    std::optional<absl::StatusOr<dispatcher::Response>> result;
    const auto* bound = dispatcher_->Resolve("users.v1.Users", "Get");
    EXPECT_NE(bound, nullptr);
    dispatcher_->InvokeUnary(
        *bound, std::move(request),
        [&](absl::StatusOr<dispatcher::Response> r) { result = std::move(r); });
    for (int i = 0; i < 400 && !result; ++i) clock_->Advance(10ms);  // version waits
    if (!result) return absl::DeadlineExceededError("no answer");
    return *result;
  }

  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  std::shared_ptr<core::MetricsRegistry> metrics_ = std::make_shared<core::MetricsRegistry>();
  std::shared_ptr<ShardMapHolder> holder_ = std::make_shared<ShardMapHolder>();
  std::shared_ptr<ShardRouter> router_;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher_;
  std::shared_ptr<ShardOutbound> outbound_;
  int served_ = 0;
};

TEST_F(ShardOutboundTest, OwnedShardsAreServedLocallyWithTheShardHeaders) {
  EXPECT_EQ(core::ErrorCode(Call("k", {}).status()).value_or(""), "no-shard-map");
  Install(3, "n1");
  auto response = Call("tenant-9", {});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, "served:b");
  EXPECT_EQ(response->headers.Get(kShardOwnerHeader).value_or(""), "n1");
  EXPECT_EQ(response->headers.Get(kShardVersionHeader).value_or(""), "3");
  EXPECT_EQ(response->headers.Get(kShardIdHeader).value_or(""),
            std::to_string(ShardOfKey("tenant-9", 16)));
  EXPECT_EQ(router_->meter("users")->Total(ShardOfKey("tenant-9", 16)), 1);
  EXPECT_EQ(metrics_->Total("omnirelay.shards.calls", {{"outcome", "local"}}), 1);
  auto unknown = Call("k", {{kShardNamespaceHeader, "orders"}});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Call("", {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ShardOutboundTest, AForwardedCallForAShardThisNodeDoesNotOwnIsRefusedNotBounced) {
  Install(5, "n2");
  auto refused = Call("k", {{kShardForwardedByHeader, "n3"}, {kShardVersionHeader, "5"}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(core::ErrorCode(refused.status()).value_or(""), "not-shard-owner");
  EXPECT_NE(refused.status().message().find("owner: n2"), std::string::npos);
  EXPECT_EQ(served_, 0);
}

TEST_F(ShardOutboundTest, AForwardedCallFromANewerVersionWaitsForItAndIsServedHere) {
  Install(5, "n2");
  dispatcher::Request request;
  request.meta.service = "users.v1.Users";
  request.meta.procedure = "Get";
  request.meta.shard_key = "k";
  request.meta.headers.Set(kShardForwardedByHeader, "n3");
  request.meta.headers.Set(kShardVersionHeader, "6");  // n3 holds v6, which names n1
  request.body = "b";
  std::optional<absl::StatusOr<dispatcher::Response>> result;
  dispatcher_->InvokeUnary(*dispatcher_->Resolve("users.v1.Users", "Get"), std::move(request),
                           [&](absl::StatusOr<dispatcher::Response> r) { result = std::move(r); });
  clock_->Advance(100ms);
  EXPECT_FALSE(result.has_value()) << "held until this node sees version 6";
  Install(6, "n1");
  clock_->Advance(20ms);
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok()) << result->status();
  EXPECT_EQ((*result)->headers.Get(kShardVersionHeader).value_or(""), "6");
  EXPECT_EQ(served_, 1);

  // The wait is bounded: a version that never arrives ends in not-shard-owner.
  Install(7, "n2");
  auto never = Call("k", {{kShardForwardedByHeader, "n3"}, {kShardVersionHeader, "99"}});
  EXPECT_EQ(core::ErrorCode(never.status()).value_or(""), "not-shard-owner");
}

}  // namespace
}  // namespace omnirelay::shards
