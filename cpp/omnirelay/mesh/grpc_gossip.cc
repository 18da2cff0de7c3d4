#include "omnirelay/mesh/grpc_gossip.h"

#include <thread>

#include "omnirelay/mesh/codec.h"
#include "omnirelay/mesh/v1/gossip.grpc.pb.h"

namespace omnirelay::mesh {

namespace {

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

struct Call {
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
};

}  // namespace

GrpcGossipTransport::GrpcGossipTransport(core::Duration send_timeout,
                                         std::map<std::string, std::string> peer_addresses,
                                         std::shared_ptr<grpc::ChannelCredentials> credentials)
    : send_timeout_(send_timeout),
      peer_addresses_(std::move(peer_addresses)),
      credentials_(credentials ? std::move(credentials) : grpc::InsecureChannelCredentials()) {}

GrpcGossipTransport::~GrpcGossipTransport() { Shutdown(std::chrono::milliseconds(1000)); }

grpc::GenericStub* GrpcGossipTransport::StubFor(const std::string& address) {
  std::lock_guard lock(mu_);
  auto& stub = stubs_[address];
  if (!stub) {
    grpc::ChannelArguments args;
    // Fail fast and reconnect fast: a dead member must look dead, a healed
    // link must carry gossip again within a probe interval or two.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // While calls are in flight, a silent connection (a paused peer, a
    // blackholed link) is abandoned after ~3 s. No pings on idle channels:
    // servers answer those with GOAWAY (too many pings) and the churn costs
    // more CPU than the gossip itself; a partition's broken stream is torn
    // down by the first bytes after the heal anyway.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 1000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    // One channel per address, not shared with the data plane's channels.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stub =
        std::make_unique<grpc::GenericStub>(grpc::CreateCustomChannel(address, credentials_, args));
  }
  return stub.get();
}

void GrpcGossipTransport::Send(const std::string& to_id, const std::string& address,
                               MessagePtr message) {
  if (shut_down_.load()) return;
  std::string dial = address;
  if (!to_id.empty()) {
    if (auto it = peer_addresses_.find(to_id); it != peer_addresses_.end()) dial = it->second;
  }
  if (dial.empty()) return;
  auto* stub = StubFor(dial);
  const std::string bytes = EncodeMessage(*message);
  if (stats_ != nullptr) stats_->bytes_sent.fetch_add(bytes.size(), std::memory_order_relaxed);
  auto call = std::make_shared<Call>();
  call->request = ToBuffer(bytes);
  call->context.set_deadline(std::chrono::system_clock::now() + send_timeout_);
  in_flight_.fetch_add(1);
  stub->UnaryCall(&call->context, kGossipSendMethod, grpc::StubOptions(), &call->request,
                  &call->response, [this, call](grpc::Status status) {
                    if (!status.ok()) failures_.fetch_add(1, std::memory_order_relaxed);
                    in_flight_.fetch_sub(1);
                  });
}

void GrpcGossipTransport::Shutdown(std::chrono::milliseconds grace) {
  shut_down_.store(true);
  const auto end = std::chrono::steady_clock::now() + grace;
  while (in_flight_.load() > 0 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Calls still in flight hold `this` in their callbacks: wait them out
  // (each is bounded by send_timeout) rather than free under them.
  while (in_flight_.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

class GossipService::Impl final : public ::omnirelay::mesh::v1::Gossip::WithRawCallbackMethod_Send<
                                      ::omnirelay::mesh::v1::Gossip::Service> {
 public:
  grpc::ServerUnaryReactor* Send(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override {
    auto* reactor = context->DefaultReactor();
    // An empty SendResponse; a raw method must always write a valid buffer.
    grpc::Slice empty;
    *response = grpc::ByteBuffer(&empty, 1);
    std::shared_ptr<Membership> membership;
    {
      std::lock_guard lock(mu_);
      membership = membership_;
    }
    const std::string bytes = FromBuffer(*request);
    if (!membership) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "membership is not running"));
      return reactor;
    }
    membership->stats().bytes_received.fetch_add(bytes.size(), std::memory_order_relaxed);
    auto message = DecodeMessage(bytes);
    if (!message.ok()) {
      membership->stats().dropped_malformed.fetch_add(1, std::memory_order_relaxed);
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   std::string(message.status().message())));
      return reactor;
    }
    membership->HandleMessage(*message);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  std::mutex mu_;
  std::shared_ptr<Membership> membership_;
};

GossipService::GossipService() : impl_(std::make_unique<Impl>()) {}
GossipService::~GossipService() = default;
grpc::Service* GossipService::service() { return impl_.get(); }
void GossipService::Attach(std::shared_ptr<Membership> membership) {
  std::lock_guard lock(impl_->mu_);
  impl_->membership_ = std::move(membership);
}

}  // namespace omnirelay::mesh
