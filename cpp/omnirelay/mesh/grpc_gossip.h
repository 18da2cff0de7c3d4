#pragma once
// Gossip over gRPC: the `omnirelay.mesh.v1.Gossip` service a node serves on
// its gRPC listener, and the transport that sends to other members with a
// generic stub per dialled address.
//
// Each message is one unary call whose response only says "received"; the
// protocol's answers travel as calls in the other direction, so gossip
// behaves like memberlist's datagrams and every hop crosses the same fault
// proxies as data traffic. Bytes are decoded here (codec.h): malformed
// messages are counted (Stats::dropped_malformed) and answered
// INVALID_ARGUMENT, never handed to Membership.
//
// Address translation: `peer_addresses` maps a member id to the address this
// node dials instead of the member's advertised one (fault proxies, NAT).
//
// Threading: Send is thread-safe and never blocks (callback API); the
// service runs on gRPC's callback threads. Shutdown() waits (bounded) for
// calls in flight.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "omnirelay/mesh/membership.h"
#include "omnirelay/mesh/transport.h"

namespace omnirelay::mesh {

inline constexpr const char* kGossipSendMethod = "/omnirelay.mesh.v1.Gossip/Send";

class GrpcGossipTransport final : public Transport {
 public:
  // `credentials`: the channel credentials gossip dials with (the node's
  // TLS/mTLS identity when omniRelay.tls is set); null = plaintext.
  GrpcGossipTransport(core::Duration send_timeout,
                      std::map<std::string, std::string> peer_addresses,
                      std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);
  ~GrpcGossipTransport() override;
  // Counts bytes and failed sends into `stats` (set before the first Send).
  void SetStats(Stats* stats) { stats_ = stats; }
  void Send(const std::string& to_id, const std::string& address, MessagePtr message) override;
  // Refuses new sends and waits up to `grace` for those in flight.
  void Shutdown(std::chrono::milliseconds grace);
  std::uint64_t send_failures() const { return failures_.load(); }

 private:
  grpc::GenericStub* StubFor(const std::string& address);
  const core::Duration send_timeout_;
  const std::map<std::string, std::string> peer_addresses_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  Stats* stats_ = nullptr;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<grpc::GenericStub>> stubs_;
  std::atomic<int> in_flight_{0};
  std::atomic<bool> shut_down_{false};
  std::atomic<std::uint64_t> failures_{0};
};

// The Gossip service (register it on the node's gRPC server before it starts).
class GossipService {
 public:
  GossipService();
  ~GossipService();
  grpc::Service* service();
  // Messages go to `membership` once set; before, they are dropped.
  void Attach(std::shared_ptr<Membership> membership);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace omnirelay::mesh
