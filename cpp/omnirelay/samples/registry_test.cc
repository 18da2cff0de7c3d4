#include "omnirelay/samples/registry.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "omnirelay/samples/registry_client.h"

namespace omnirelay::samples {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Registrations are always authenticated (RegistryServer::Start refuses
// otherwise); these tests use a bearer token.
constexpr char kToken[] = "registry-test-token-0123456789abcdef";

absl::StatusOr<RegistryClient> TokenClient(const std::string& address,
                                           std::chrono::milliseconds timeout = seconds(2)) {
  auto client = RegistryClient::Create(address, timeout);
  if (client.ok()) client->set_token(kToken);
  return client;
}

TEST(InstanceRegistryTest, RegisterListUnregister) {
  auto clock = std::make_shared<core::ManualClock>();
  InstanceRegistry registry({.ttl = seconds(5)}, clock);
  ASSERT_TRUE(registry.Register({"w2", "127.0.0.1:2", "worker"}).ok());
  ASSERT_TRUE(registry.Register({"w1", "127.0.0.1:1", "worker"}).ok());
  ASSERT_TRUE(registry.Register({"auth", "127.0.0.1:3", "auth"}).ok());
  EXPECT_EQ(registry.List("worker"), (std::vector<Instance>{{"w1", "127.0.0.1:1", "worker"},
                                                            {"w2", "127.0.0.1:2", "worker"}}));
  EXPECT_EQ(registry.List().size(), 3u);

  // Upsert replaces the address.
  ASSERT_TRUE(registry.Register({"w1", "127.0.0.1:11", "worker"}).ok());
  EXPECT_EQ(registry.List("worker").front().address, "127.0.0.1:11");

  EXPECT_TRUE(registry.Unregister("w1"));
  EXPECT_FALSE(registry.Unregister("w1"));
  EXPECT_EQ(registry.List("worker"), (std::vector<Instance>{{"w2", "127.0.0.1:2", "worker"}}));
  EXPECT_EQ(registry.Register({"", "a:1", "worker"}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(InstanceRegistryTest, EntriesExpireUnlessRefreshed) {
  auto clock = std::make_shared<core::ManualClock>();
  InstanceRegistry registry({.ttl = seconds(5)}, clock);
  ASSERT_TRUE(registry.Register({"alive", "a:1", "worker"}).ok());
  ASSERT_TRUE(registry.Register({"dead", "a:2", "worker"}).ok());
  clock->Advance(seconds(4));
  ASSERT_TRUE(registry.Register({"alive", "a:1", "worker"}).ok());  // heartbeat
  EXPECT_EQ(registry.List().size(), 2u);
  clock->Advance(seconds(1));  // "dead" reaches its TTL
  EXPECT_EQ(registry.List(), (std::vector<Instance>{{"alive", "a:1", "worker"}}));
  clock->Advance(seconds(3));  // t=8: "alive" was refreshed at t=4
  EXPECT_EQ(registry.List().size(), 1u);
  clock->Advance(seconds(1));  // t=9
  EXPECT_TRUE(registry.List().empty());
}

TEST(RegistryServerTest, ClientTalksToServerOverHttp) {
  auto clock = std::make_shared<core::ManualClock>();
  RegistryServer server({.host = "127.0.0.1", .port = 0, .threads = 1},
                        {.ttl = seconds(5), .token = kToken}, clock);
  ASSERT_TRUE(server.Start().ok());
  auto client = TokenClient(server.address());
  ASSERT_TRUE(client.ok()) << client.status();

  ASSERT_TRUE(client->Register({"w1", "127.0.0.1:5001", "worker"}).ok());
  ASSERT_TRUE(client->Register({"a1", "127.0.0.1:5002", "auth"}).ok());
  auto workers = client->List("worker");
  ASSERT_TRUE(workers.ok()) << workers.status();
  EXPECT_EQ(*workers, (std::vector<Instance>{{"w1", "127.0.0.1:5001", "worker"}}));
  EXPECT_EQ(client->List()->size(), 2u);

  clock->Advance(seconds(4));
  ASSERT_TRUE(client->Heartbeat({"w1", "127.0.0.1:5001", "worker"}).ok());
  clock->Advance(seconds(2));
  EXPECT_EQ(*client->List(), (std::vector<Instance>{{"w1", "127.0.0.1:5001", "worker"}}));

  ASSERT_TRUE(client->Unregister("w1").ok());
  ASSERT_TRUE(client->Unregister("w1").ok());  // idempotent
  EXPECT_TRUE(client->List("worker")->empty());

  // Malformed requests are refused with 400 and leave the table unchanged.
  core::Headers auth;
  auth.Set("Authorization", std::string("Bearer ") + kToken);
  auto bad = http::HttpCall("127.0.0.1", server.port(), "POST", "/register", "{not json", auth);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->status, 400);
  auto missing = http::HttpCall("127.0.0.1", server.port(), "POST", "/register",
                                R"({"id":"x","address":"","role":"worker"})", auth);
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 400);
  auto wrong_type = http::HttpCall("127.0.0.1", server.port(), "POST", "/register",
                                   R"({"id":1,"address":"a:1","role":"worker"})", auth);
  ASSERT_TRUE(wrong_type.ok());
  EXPECT_EQ(wrong_type->status, 400);
  EXPECT_TRUE(client->List()->empty());
  server.Stop();

  auto down = client->List();
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable);
}

TEST(RegistrationLoopTest, RegistersHeartbeatsAndUnregisters) {
  RegistryServer server({.host = "127.0.0.1", .port = 0, .threads = 1},
                        {.ttl = milliseconds(300), .token = kToken});
  ASSERT_TRUE(server.Start().ok());
  auto client = TokenClient(server.address());
  ASSERT_TRUE(client.ok());
  {
    RegistrationLoop loop(*client, {"w1", "127.0.0.1:7000", "worker"}, milliseconds(50));
    ASSERT_TRUE(loop.Start().ok());
    EXPECT_EQ(client->List("worker")->size(), 1u);
    // Outlive the TTL several times: only heartbeats keep the entry.
    std::this_thread::sleep_for(milliseconds(1000));
    EXPECT_EQ(client->List("worker")->size(), 1u);
    loop.Stop();
    EXPECT_TRUE(client->List("worker")->empty());
  }
  server.Stop();
}

TEST(RegistrationLoopTest, JoinsWhenRegistryComesUpLater) {
  // Reserve a port, then release it for the registry started later.
  uint16_t port = 0;
  {
    RegistryServer probe({.host = "127.0.0.1", .port = 0}, {.token = kToken});
    ASSERT_TRUE(probe.Start().ok());
    port = probe.port();
    probe.Stop();
  }
  const std::string address = "127.0.0.1:" + std::to_string(port);
  auto client = TokenClient(address, milliseconds(500));
  ASSERT_TRUE(client.ok());
  RegistrationLoop loop(*client, {"w1", "127.0.0.1:7000", "worker"}, milliseconds(50));
  EXPECT_FALSE(loop.Start().ok());
  RegistryServer server({.host = "127.0.0.1", .port = port}, {.token = kToken});
  ASSERT_TRUE(server.Start().ok());
  bool joined = false;
  for (int i = 0; i < 100 && !joined; ++i) {
    std::this_thread::sleep_for(milliseconds(20));
    joined = client->List("worker").value_or(std::vector<Instance>{}).size() == 1;
  }
  EXPECT_TRUE(joined);
  loop.Stop();
  server.Stop();
}

TEST(SplitHostPortTest, ParsesAndRejects) {
  EXPECT_EQ(*SplitHostPort("127.0.0.1:80"), std::make_pair(std::string("127.0.0.1"), uint16_t{80}));
  EXPECT_EQ(SplitHostPort("[::1]:0")->first, "::1");
  EXPECT_FALSE(SplitHostPort("nohost").ok());
  EXPECT_FALSE(SplitHostPort("h:").ok());
  EXPECT_FALSE(SplitHostPort("h:70000").ok());
  EXPECT_FALSE(SplitHostPort("h:8x").ok());
  EXPECT_FALSE(RegistryClient::Create("h:0").ok());
}

}  // namespace
}  // namespace omnirelay::samples
