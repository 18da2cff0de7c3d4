// The shard route over real gRPC: three in-process nodes, each with its own
// dispatcher, router, map holder and gRPC inbound on loopback; maps installed
// by hand (no store). The first hop is the node's dispatcher, every forward
// is a real gRPC call through the shard route's one peer pool. The clock is
// a ManualClock (geo evaluations, holds and breaker timers advance by hand;
// gRPC itself runs in real time).
#include <gtest/gtest.h>

#include <future>

#include "omnirelay/shards/shard_outbound.h"
#include "omnirelay/shards/strategy.h"
#include "omnirelay/transport/grpc_transport.h"
#include "omnirelay/transport/peer_pool.h"

namespace omnirelay::shards {
namespace {

using namespace std::chrono_literals;

struct TestNode {
  std::string id;
  std::string region;
  std::shared_ptr<ShardMapHolder> holder = std::make_shared<ShardMapHolder>();
  std::shared_ptr<core::MetricsRegistry> metrics = std::make_shared<core::MetricsRegistry>();
  std::shared_ptr<ShardRouter> router;
  std::shared_ptr<dispatcher::Dispatcher> dispatcher;
  std::shared_ptr<ShardOutbound> outbound;
  std::unique_ptr<transport::GrpcInbound> inbound;
  std::atomic<bool> failing{false};
  std::string address;
};

class ShardRouteNetTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& n : nodes_) n->inbound->Shutdown(200ms);
    for (auto& n : nodes_) n->dispatcher->Stop();
  }

  TestNode& AddNode(const std::string& id, const std::string& region,
                    std::optional<peers::GeoChooserOptions> geo = std::nullopt) {
    auto node = std::make_unique<TestNode>();
    TestNode* n = node.get();
    n->id = id;
    n->region = region;
    NamespaceOptions ns;
    ns.spec.ns = "users";
    ns.spec.shard_count = 64;
    ns.spec.replicas = 1;
    ns.service = "users.v1.Users";
    ns.local_service = "local.Users";
    n->router = std::make_shared<ShardRouter>(
        id, std::vector<NamespaceOptions>{ns}, n->holder, [](std::string_view) { return true; },
        clock_);
    n->dispatcher = std::make_shared<dispatcher::Dispatcher>(id);
    dispatcher::Procedure get;
    get.service = "local.Users";
    get.name = "Get";
    get.unary = [n](dispatcher::Request, dispatcher::UnaryCallback done) {
      if (n->failing.load()) {
        done(absl::UnavailableError(n->id + " is failing"));
        return;
      }
      done(dispatcher::Response{.headers = {}, .body = n->id});
    };
    dispatcher::Procedure watch;
    watch.service = "local.Users";
    watch.name = "Watch";
    watch.kind = dispatcher::ProcedureKind::kServerStream;
    watch.server_stream = [n](const dispatcher::Request& request, dispatcher::ServerStream& out) {
      for (int i = 0; i < 3; ++i) {
        if (!out.Write(request.body + "@" + n->id + ":" + std::to_string(i))) break;
      }
      return absl::OkStatus();
    };
    dispatcher::Procedure collect;
    collect.service = "local.Users";
    collect.name = "Collect";
    collect.kind = dispatcher::ProcedureKind::kClientStream;
    collect.client_stream =
        [n](const core::RequestMeta&,
            dispatcher::ClientStream& in) -> absl::StatusOr<dispatcher::Response> {
      std::string all;
      while (auto m = in.Read()) all += *m;
      return dispatcher::Response{.headers = {}, .body = all + "@" + n->id};
    };
    dispatcher::Procedure chat;
    chat.service = "local.Users";
    chat.name = "Chat";
    chat.kind = dispatcher::ProcedureKind::kDuplex;
    chat.duplex = [n](const core::RequestMeta&, dispatcher::ClientStream& in,
                      dispatcher::ServerStream& out) {
      while (auto m = in.Read()) {
        if (!out.Write(*m + "@" + n->id)) break;
      }
      return absl::OkStatus();
    };
    for (auto* p : {&get, &watch, &collect, &chat}) EXPECT_TRUE(n->dispatcher->Register(*p).ok());
    ShardOutboundOptions options{
        .ns = "users", .local_service = "local.Users", .peer_addresses = {}, .tls = std::nullopt};
    options.geo = geo;
    n->outbound =
        std::make_shared<ShardOutbound>(options, n->router, n->dispatcher, clock_, n->metrics);
    EXPECT_TRUE(n->dispatcher->AddOutbound("shards.users", n->outbound).ok());
    EXPECT_TRUE(n->dispatcher->AddRoute({"users.v1.Users/", "shards.users"}).ok());
    EXPECT_TRUE(n->dispatcher
                    ->AddRoute({"users.v1.Users/Watch", "shards.users",
                                dispatcher::ProcedureKind::kServerStream})
                    .ok());
    EXPECT_TRUE(n->dispatcher
                    ->AddRoute({"users.v1.Users/Collect", "shards.users",
                                dispatcher::ProcedureKind::kClientStream})
                    .ok());
    EXPECT_TRUE(
        n->dispatcher
            ->AddRoute({"users.v1.Users/Chat", "shards.users", dispatcher::ProcedureKind::kDuplex})
            .ok());
    EXPECT_TRUE(n->dispatcher->Start().ok());
    n->inbound = std::make_unique<transport::GrpcInbound>(
        transport::GrpcInboundOptions{.address = "127.0.0.1:0", .threads = 1}, n->dispatcher);
    EXPECT_TRUE(n->inbound->Start().ok());
    n->address = n->inbound->address();
    nodes_.push_back(std::move(node));
    return *n;
  }

  ShardMap ComputeMap() {
    std::vector<ShardNode> members;
    for (auto& n : nodes_) members.push_back({n->id, n->address, n->region, ""});
    return *ComputeShardMap(nodes_[0]->router->Find("users")->spec, members);
  }
  void InstallEverywhere(ShardMap map) {
    auto shared = std::make_shared<const ShardMap>(std::move(map));
    for (auto& n : nodes_) ASSERT_TRUE(n->holder->Offer(shared));
  }
  // A key whose shard's placement is exactly `owner` then `replica`.
  std::string KeyPlacedOn(const ShardMap& map, const std::string& owner,
                          const std::string& replica) {
    for (int i = 0; i < 10000; ++i) {
      std::string key = "key-" + std::to_string(i);
      auto p = map.Placement(map.ShardOf(key));
      if (map.nodes[p[0]].id == owner && map.nodes[p[1]].id == replica) return key;
    }
    ADD_FAILURE() << "no key placed on " << owner << " then " << replica;
    return "";
  }

  absl::StatusOr<dispatcher::Response> Call(TestNode& via, const std::string& key) {
    dispatcher::Request request;
    request.meta.service = "users.v1.Users";
    request.meta.procedure = "Get";
    request.meta.shard_key = key;
    auto promise = std::make_shared<std::promise<absl::StatusOr<dispatcher::Response>>>();
    auto future = promise->get_future();
    via.dispatcher->InvokeUnary(
        *via.dispatcher->Resolve("users.v1.Users", "Get"), std::move(request),
        [promise](absl::StatusOr<dispatcher::Response> r) { promise->set_value(std::move(r)); });
    if (future.wait_for(20s) != std::future_status::ready) {
      return absl::DeadlineExceededError("no answer in 20 s");
    }
    return future.get();
  }

  std::shared_ptr<core::ManualClock> clock_ = std::make_shared<core::ManualClock>();
  std::vector<std::unique_ptr<TestNode>> nodes_;
};

class Collector final : public dispatcher::ServerStream {
 public:
  bool Write(std::string message) override {
    messages.push_back(std::move(message));
    return true;
  }
  std::vector<std::string> messages;
};
class Feeder final : public dispatcher::ClientStream {
 public:
  explicit Feeder(std::vector<std::string> messages) : messages_(std::move(messages)) {}
  std::optional<std::string> Read() override {
    if (next_ >= messages_.size()) return std::nullopt;
    return messages_[next_++];
  }

 private:
  std::vector<std::string> messages_;
  std::size_t next_ = 0;
};

core::RequestMeta StreamMeta(const std::string& procedure, const std::string& key) {
  core::RequestMeta meta;
  meta.service = "users.v1.Users";
  meta.procedure = procedure;
  meta.shard_key = key;
  return meta;
}

TEST_F(ShardRouteNetTest, UnaryCallsGoToTheOwnerThroughOnePoolThatFollowsTheMap) {
  auto& a = AddNode("a", "");
  AddNode("b", "");
  AddNode("c", "");
  auto map = ComputeMap();
  map.version = 1;
  const std::string key = KeyPlacedOn(map, "b", "c");
  InstallEverywhere(map);
  auto response = Call(a, key);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, "b");
  EXPECT_EQ(response->headers.Get(kShardServedByHeader).value_or(""), "b");
  EXPECT_EQ(response->headers.Get(kShardRoleHeader).value_or(""), "owner");
  // The pick went through the peer kit: a lease on peer b, released as a success.
  EXPECT_EQ(a.metrics->Total("omnirelay.peer.successes", {{"rpc.peer", "b"}}), 1);
  EXPECT_EQ(a.outbound->pool()->Peers().size(), 2u);
  EXPECT_EQ(nodes_[1]->router->meter("users")->Total(map.ShardOf(key)), 1);

  // The shard moves to c (version 2): the same pool sends the next call there.
  auto moved = map;
  ASSERT_TRUE(moved.Move(map.ShardOf(key), "c", "manual", "").ok());
  moved.version = 2;
  InstallEverywhere(moved);
  response = Call(a, key);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, "c");

  // c leaves (version 3): it is dropped from a's pool, its shards go elsewhere.
  std::vector<ShardNode> two = {{"a", nodes_[0]->address, "", ""},
                                {"b", nodes_[1]->address, "", ""}};
  auto smaller = *ComputeShardMap(a.router->Find("users")->spec, two);
  smaller.version = 3;
  InstallEverywhere(smaller);
  ASSERT_EQ(a.outbound->pool()->Peers().size(), 1u);
  response = Call(a, key);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, smaller.Owner(smaller.ShardOf(key)).id);
}

TEST_F(ShardRouteNetTest, StreamingCallsAreShardRoutedToTheOwner) {
  auto& a = AddNode("a", "");
  auto& b = AddNode("b", "");
  AddNode("c", "");
  auto map = ComputeMap();
  map.version = 1;
  InstallEverywhere(map);
  const std::string remote = KeyPlacedOn(map, "b", "c");
  const std::string local = KeyPlacedOn(map, "a", "b");

  for (const auto& [key, owner] : {std::pair{remote, std::string("b")}, {local, "a"}}) {
    // server-stream
    Collector out;
    const auto* watch = a.dispatcher->Resolve("users.v1.Users", "Watch");
    ASSERT_NE(watch, nullptr);
    auto status = a.dispatcher->InvokeServerStream(
        *watch, dispatcher::Request{.meta = StreamMeta("Watch", key), .body = "w"}, out);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(out.messages, (std::vector<std::string>{"w@" + owner + ":0", "w@" + owner + ":1",
                                                      "w@" + owner + ":2"}));
    // client-stream
    Feeder in({"x", "y", "z"});
    const auto* collect = a.dispatcher->Resolve("users.v1.Users", "Collect");
    auto collected = a.dispatcher->InvokeClientStream(*collect, StreamMeta("Collect", key), in);
    ASSERT_TRUE(collected.ok()) << collected.status();
    EXPECT_EQ(collected->body, "xyz@" + owner);
    // duplex
    Feeder chat_in({"p", "q"});
    Collector chat_out;
    const auto* chat = a.dispatcher->Resolve("users.v1.Users", "Chat");
    status = a.dispatcher->InvokeDuplex(*chat, StreamMeta("Chat", key), chat_in, chat_out);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(chat_out.messages, (std::vector<std::string>{"p@" + owner, "q@" + owner}));
  }
  // Metered where served: three streams each on b (remote key) and a (local key).
  EXPECT_EQ(b.router->meter("users")->Total(map.ShardOf(remote)), 3);
  EXPECT_EQ(a.router->meter("users")->Total(map.ShardOf(local)), 3);
  EXPECT_EQ(a.router->meter("users")->Total(map.ShardOf(remote)), 0);
  EXPECT_EQ(a.metrics->Total("omnirelay.peer.successes", {{"rpc.peer", "b"}}), 3);

  // A key without a key: refused before any stream opens.
  Collector none;
  auto refused = a.dispatcher->InvokeServerStream(
      *a.dispatcher->Resolve("users.v1.Users", "Watch"),
      dispatcher::Request{.meta = StreamMeta("Watch", ""), .body = "w"}, none);
  EXPECT_EQ(core::ErrorCode(refused).value_or(""), "missing-shard-key");
}

TEST_F(ShardRouteNetTest, GeoStickinessMovesToTheReplicaInTheFallbackRegionAndBack) {
  peers::GeoChooserOptions geo;
  geo.region = "west";
  geo.latency_threshold_ms = 0;  // the failure rule drives this test
  geo.failure_rate_threshold = 0.3;
  geo.min_samples = 4;
  geo.hold = 1s;
  geo.evaluate_every = 100ms;
  geo.probe_every = 2;
  geo.inner = "round-robin";
  auto& w1 = AddNode("w1", "west", geo);
  auto& w2 = AddNode("w2", "west");
  auto& e1 = AddNode("e1", "east");
  auto map = ComputeMap();
  map.version = 1;
  InstallEverywhere(map);
  const std::string key = KeyPlacedOn(map, "w2", "e1");
  const std::string east_key = KeyPlacedOn(map, "e1", "w2");

  // Local mode: the west owner; an east-owned key goes to its west replica.
  auto r = Call(w1, key);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "w2");
  r = Call(w1, east_key);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "w2");
  EXPECT_EQ(r->headers.Get(kShardRoleHeader).value_or(""), "replica");
  EXPECT_EQ(r->headers.Get(kShardOwnerHeader).value_or(""), "e1");
  EXPECT_EQ(w1.outbound->geo()->mode(), peers::GeoChooser::Mode::kLocal);

  // The west region fails: after enough failed outcomes the chooser falls
  // back, and the key goes to its east replica.
  w2.failing = true;
  bool on_replica = false;
  for (int i = 0; i < 40 && !on_replica; ++i) {
    clock_->Advance(150ms);
    r = Call(w1, key);
    on_replica = r.ok() && r->body == "e1";
  }
  ASSERT_TRUE(on_replica) << "never reached the east replica; last: " << r.status();
  EXPECT_EQ(w1.outbound->geo()->mode(), peers::GeoChooser::Mode::kFallback);
  EXPECT_EQ(r->headers.Get(kShardRoleHeader).value_or(""), "replica");
  EXPECT_EQ(r->headers.Get(kShardServedByHeader).value_or(""), "e1");
  EXPECT_EQ(e1.router->meter("users")->Total(map.ShardOf(key)), 1);
  // In fallback an east-owned key stays on its owner.
  r = Call(w1, east_key);
  if (r.ok()) {
    EXPECT_EQ(r->body, "e1");  // (a local probe may hit failing w2 instead)
  }

  // West heals: the probes succeed, and after the hold the owner is back.
  w2.failing = false;
  bool on_owner = false;
  for (int i = 0; i < 120 && !on_owner; ++i) {
    clock_->Advance(150ms);
    r = Call(w1, key);
    on_owner =
        r.ok() && r->body == "w2" && w1.outbound->geo()->mode() == peers::GeoChooser::Mode::kLocal;
  }
  ASSERT_TRUE(on_owner) << "never returned to the west owner";
  EXPECT_EQ(r->headers.Get(kShardRoleHeader).value_or(""), "owner");
  EXPECT_EQ(w1.outbound->geo()->transitions(), 2u);
  EXPECT_GT(w1.metrics->Total("omnirelay.geo.routed", {{"geo.region", "east"}}), 0);
}

}  // namespace
}  // namespace omnirelay::shards
