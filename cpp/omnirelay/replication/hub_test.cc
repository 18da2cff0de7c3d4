// The hub over a real gRPC server on loopback: append, durable acknowledgement,
// a hub outage (partition) with buffering and catch-up after it returns on the
// same port, subscribers resuming from their last acknowledged sequence.
#include "omnirelay/replication/hub.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "omnirelay/replication/test_util.h"
#include "omnirelay/tls/grpc_credentials.h"
#include "omnirelay/tls/test_certs.h"

namespace omnirelay::replication {
namespace {

using testing::MakeEvent;
using testing::TempDir;

// A hub process stand-in: its own SQLite log behind a gRPC server.
struct Hub {
  Hub(const std::string& db, int port = 0,
      std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials()) {
    log = *SqliteReplicator::Open({.path = db, .full_sync = false});
    service = std::make_unique<HubService>(log);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port), credentials, &this->port);
    builder.RegisterService(service.get());
    server = builder.BuildAndStart();
  }
  ~Hub() { Stop(); }
  void Stop() {
    if (server) {
      server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
      server.reset();
    }
    if (log) log->Close();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }

  std::shared_ptr<SqliteReplicator> log;
  std::unique_ptr<HubService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

absl::Status WaitDurable(Replicator& r, std::string_view queue, std::uint64_t seq,
                         std::chrono::seconds limit = std::chrono::seconds(30)) {
  auto done = std::make_shared<std::promise<absl::Status>>();
  auto fut = done->get_future();
  r.WhenDurable(queue, seq, [done](absl::Status s) { done->set_value(s); });
  if (fut.wait_for(limit) != std::future_status::ready) return absl::DeadlineExceededError("wait");
  return fut.get();
}

std::vector<std::uint64_t> Sequences(Replicator& r, std::string_view queue, std::uint64_t after) {
  std::vector<std::uint64_t> out;
  auto s = r.Read(queue, after, [&](const ReplicationEvent& e) {
    out.push_back(e.sequence);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(ReplicationHub, AppendsDurablyAndServesSubscribers) {
  TempDir dir;
  Hub hub(dir / "hub.db");
  ASSERT_GT(hub.port, 0);
  auto client = GrpcHubReplicator::Open({.address = hub.address()});
  ASSERT_TRUE(client.ok());
  ASSERT_EQ(*(*client)->LastSequence("q"), 0u);
  for (std::uint64_t s = 1; s <= 50; ++s) ASSERT_TRUE((*client)->Publish(MakeEvent("q", s)).ok());
  ASSERT_TRUE(WaitDurable(**client, "q", 50).ok());
  // The hub's own log holds them, checksummed, in order.
  EXPECT_EQ(*hub.log->LastSequence("q"), 50u);
  auto all = Sequences(**client, "q", 0);
  ASSERT_EQ(all.size(), 50u);
  EXPECT_EQ(all.front(), 1u);
  EXPECT_EQ(all.back(), 50u);
  // A subscriber resumes after its last acknowledged sequence.
  EXPECT_EQ(Sequences(**client, "q", 42).size(), 8u);
}

TEST(ReplicationHub, CatchesUpInOrderAfterTheHubWasUnreachable) {
  TempDir dir;
  auto hub = std::make_unique<Hub>(dir / "hub.db");
  const int port = hub->port;
  auto client = GrpcHubReplicator::Open(
      {.address = hub->address(),
       .call_timeout = std::chrono::seconds(2),
       .batch = {.max_batch = 64, .retry_interval = std::chrono::milliseconds(50)}});
  ASSERT_TRUE(client.ok());
  for (std::uint64_t s = 1; s <= 100; ++s) ASSERT_TRUE((*client)->Publish(MakeEvent("q", s)).ok());
  ASSERT_TRUE(WaitDurable(**client, "q", 100).ok());

  hub->Stop();  // the partition: the hub is gone
  hub.reset();
  for (std::uint64_t s = 101; s <= 1000; ++s) {
    ASSERT_TRUE((*client)->Publish(MakeEvent("q", s)).ok());  // buffered, not dropped
  }
  // Acknowledgements stop while the hub is unreachable.
  auto during = WaitDurable(**client, "q", 1000);
  EXPECT_EQ(during.code(), absl::StatusCode::kUnavailable) << during;

  // The hub comes back on the same address with its log: the client catches up.
  hub = std::make_unique<Hub>(dir / "hub.db", port);
  ASSERT_EQ(hub->port, port);
  for (int i = 0; i < 3000 && (*client)->Status().queues["q"].durable < 1000; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ((*client)->Status().queues["q"].durable, 1000u);
  auto all = Sequences(**client, "q", 0);
  ASSERT_EQ(all.size(), 1000u);
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], i + 1);
  EXPECT_EQ(Sequences(**client, "q", 100).size(), 900u);  // a subscriber's catch-up
}

TEST(ReplicationHub, ResentEventsAreSkippedAndGapsRefused) {
  TempDir dir;
  Hub hub(dir / "hub.db");
  auto stub =
      v1::Hub::NewStub(grpc::CreateChannel(hub.address(), grpc::InsecureChannelCredentials()));
  auto append = [&](std::vector<std::uint64_t> seqs, v1::AppendResponse* out) {
    v1::AppendRequest req;
    for (auto s : seqs) req.add_lines(EncodeLine(MakeEvent("q", s)));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub->Append(&ctx, req, out);
  };
  v1::AppendResponse r;
  ASSERT_TRUE(append({1, 2, 3}, &r).ok());
  EXPECT_EQ(r.appended(), 3u);
  ASSERT_TRUE(append({2, 3, 4}, &r).ok());  // a resend overlapping what the hub has
  EXPECT_EQ(r.appended(), 1u);
  EXPECT_EQ(r.duplicates(), 2u);
  EXPECT_EQ(r.durable().at("q"), 4u);
  auto gap = append({6}, &r);
  EXPECT_EQ(gap.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::AppendRequest bad;
  std::string line = EncodeLine(MakeEvent("q", 5));
  line[20] ^= 0x01;
  bad.add_lines(line);
  grpc::ClientContext ctx;
  EXPECT_EQ(stub->Append(&ctx, bad, &r).error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(*hub.log->LastSequence("q"), 4u);
}

// An mTLS hub takes appends only from clients presenting a certificate of its
// CA; a plaintext client is never acknowledged (no silent downgrade).
TEST(ReplicationHub, MutualTlsHubAcknowledgesOnlyCertifiedClients) {
  TempDir dir;
  const auto pki = tls::testing::TestPki::Create(dir.path(), "hub");
  const auto [hub_cert, hub_key] = pki.Leaf("hub", "hub");
  const auto [node_cert, node_key] = pki.Leaf("node", "node");
  Hub hub(dir / "hub.db", 0,
          tls::GrpcServerCredentials({.cert_file = hub_cert,
                                      .key_file = hub_key,
                                      .ca_file = pki.ca_file,
                                      .client_auth = tls::ClientAuth::kRequire}));
  ASSERT_GT(hub.port, 0);

  auto secure = GrpcHubReplicator::Open(
      {.address = hub.address(),
       .credentials = tls::GrpcChannelCredentials(
           {.cert_file = node_cert, .key_file = node_key, .ca_file = pki.ca_file})},
      "secure");
  ASSERT_TRUE(secure.ok());
  for (std::uint64_t s = 1; s <= 20; ++s) ASSERT_TRUE((*secure)->Publish(MakeEvent("q", s)).ok());
  ASSERT_TRUE(WaitDurable(**secure, "q", 20).ok());
  EXPECT_EQ(*hub.log->LastSequence("q"), 20u);

  auto plaintext = GrpcHubReplicator::Open(
      {.address = hub.address(),
       .call_timeout = std::chrono::seconds(2),
       .batch = {.max_batch = 64, .retry_interval = std::chrono::milliseconds(50)}},
      "plaintext");
  ASSERT_TRUE(plaintext.ok());
  ASSERT_TRUE((*plaintext)->Publish(MakeEvent("other", 1)).ok());
  auto refused = WaitDurable(**plaintext, "other", 1);
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_EQ(*hub.log->LastSequence("other"), 0u);
}

}  // namespace
}  // namespace omnirelay::replication
