#pragma once
// The gRPC replication hub (service omnirelay.replication.v1.Hub) and its
// client replicator.
//
// HubService persists appended events to the hub's own log (any Replicator;
// a SqliteReplicator in practice) and serves them to subscribers: Subscribe
// streams a queue from the subscriber's last acknowledged sequence and, with
// follow, keeps streaming new events. Append answers only once its events are
// durable in the hub's log; events the hub already has are skipped, so a
// client that resends after a lost answer (or a partition) never duplicates.
//
// GrpcHubReplicator is a node's Replicator that streams to a hub: group
// commits become Append calls; while the hub is unreachable (partition, hub
// restart) the events stay buffered, acknowledgements fail UNAVAILABLE, and
// the writer retries: after the heal it catches up in order from where the
// hub's log ends. Read/LastSequence ask the hub (and learn its position, so
// Publish continues after it).
// Thread-safety: both are thread-safe; Subscribe with follow holds one gRPC
// server thread per subscriber.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <string>

#include "omnirelay/replication/durable_replicators.h"
#include "omnirelay/replication/v1/hub.grpc.pb.h"

namespace omnirelay::replication {

class HubService final : public v1::Hub::Service {
 public:
  // `log`: the hub's own log. `ack_timeout`: how long Append waits for
  // durability before answering UNAVAILABLE.
  explicit HubService(std::shared_ptr<Replicator> log,
                      core::Duration ack_timeout = std::chrono::seconds(10));
  grpc::Status Append(grpc::ServerContext* context, const v1::AppendRequest* request,
                      v1::AppendResponse* response) override;
  grpc::Status Position(grpc::ServerContext* context, const v1::PositionRequest* request,
                        v1::PositionResponse* response) override;
  grpc::Status Subscribe(grpc::ServerContext* context, const v1::SubscribeRequest* request,
                         grpc::ServerWriter<v1::EventLine>* writer) override;

 private:
  const std::shared_ptr<Replicator> log_;
  const core::Duration ack_timeout_;
  std::mutex append_mu_;  // appends from several nodes interleave per call, not per event
};

struct GrpcHubReplicatorOptions {
  std::string address;  // host:port of the hub
  // TLS/mTLS to the hub (tls::GrpcChannelCredentials); null = plaintext. The
  // node decides: https:// or omniRelay.tls means TLS, never a silent downgrade.
  std::shared_ptr<grpc::ChannelCredentials> credentials{};
  core::Duration call_timeout = std::chrono::seconds(5);
  BatchOptions batch{};
};

class GrpcHubReplicator : public BatchingReplicator {
 public:
  static absl::StatusOr<std::shared_ptr<GrpcHubReplicator>> Open(GrpcHubReplicatorOptions options,
                                                                 std::string name = "hub");
  ~GrpcHubReplicator() override;
  absl::StatusOr<std::uint64_t> LastSequence(std::string_view queue) override;
  absl::Status Read(std::string_view queue, std::uint64_t after,
                    const EventVisitor& visit) override;

 protected:
  absl::Status WriteBatch(std::span<const ReplicationEvent> batch) override;

 private:
  GrpcHubReplicator(GrpcHubReplicatorOptions options, std::string name);
  const GrpcHubReplicatorOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Hub::Stub> stub_;
};

}  // namespace omnirelay::replication
