// Membership over real gRPC servers on loopback (the production transport),
// with the system clock: join through a seed, see each other alive, detect a
// stopped member, count a malformed message. Concurrent (gRPC callback
// threads + the timer thread); concurrency_test.cc is the TSan-stage twin.
#include "omnirelay/mesh/grpc_gossip.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "omnirelay/mesh/codec.h"

namespace omnirelay::mesh {
namespace {

struct RealNode {
  std::unique_ptr<GossipService> service = std::make_unique<GossipService>();
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<GrpcGossipTransport> transport;
  std::shared_ptr<Membership> membership;
  std::string address;

  void Start(const std::string& id, std::vector<std::string> seeds) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service->service());
    server = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    address = "127.0.0.1:" + std::to_string(port);
    Options options = Options::Test();
    options.cluster_name = "grpc-test";
    transport = std::make_shared<GrpcGossipTransport>(options.send_timeout,
                                                      std::map<std::string, std::string>{});
    membership =
        Membership::Create(LocalIdentity{id, address, MemberMeta{{"r"}, "east", "a", {}, {}}},
                           options, core::SystemClock::Shared(), transport);
    transport->SetStats(&membership->stats());
    service->Attach(membership);
    membership->Start(std::move(seeds));
  }
  void Stop() {
    if (membership) membership->Stop();
    if (transport) transport->Shutdown(std::chrono::milliseconds(1000));
    if (server) server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    server.reset();
  }
  ~RealNode() { Stop(); }
};

bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

TEST(GrpcGossipTest, JoinDetectFailureAndDropMalformed) {
  RealNode a, b, c;
  a.Start("a", {});
  b.Start("b", {a.address});
  c.Start("c", {a.address});
  ASSERT_TRUE(WaitFor(
      [&] {
        return a.membership->NumAlive() == 3 && b.membership->NumAlive() == 3 &&
               c.membership->NumAlive() == 3;
      },
      std::chrono::seconds(20)));
  EXPECT_GT(a.membership->stats().bytes_received.load(), 0u);
  EXPECT_GT(b.membership->stats().bytes_sent.load(), 0u);

  // Garbage on the wire: counted, answered INVALID_ARGUMENT, nothing else.
  auto channel = grpc::CreateChannel(a.address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  const char kGarbage[] = "\xff\xff\xff not a message";
  grpc::Slice slice(std::string(kGarbage, sizeof(kGarbage) - 1));
  grpc::ByteBuffer request(&slice, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, kGossipSendMethod, grpc::StubOptions(), &request, &response,
                 [&](grpc::Status status) { done.set_value(status); });
  const auto status = done.get_future().get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(a.membership->stats().dropped_malformed.load(), 1u);

  // c stops answering: a and b declare it dead.
  c.Stop();
  ASSERT_TRUE(WaitFor(
      [&] {
        auto ma = a.membership->Find("c");
        auto mb = b.membership->Find("c");
        return ma && mb && ma->record.state == MemberState::kDead &&
               mb->record.state == MemberState::kDead;
      },
      std::chrono::seconds(20)));
  EXPECT_EQ(a.membership->Find("b")->record.state, MemberState::kAlive);
}

}  // namespace
}  // namespace omnirelay::mesh
