#pragma once
// The node's ResourceLease replication (config omniRelay.resourceLease.replication,
// docs/replication.md): one replicator for all of the node's queues (SQLite log,
// segment files or memory; tagged with the shard when configured), a
// checkpointing sink in front of the deterministic coordinator, and recovery.
//
// Startup order per queue (Attach, before its procedures are registered):
//   1. replay the queue's log through the checkpointing sink + deterministic
//      store (events tagged lease.replay=true; effects recorded before the
//      crash are skipped), folding it into the queue's state;
//   2. install the observer (every later mutation goes to the replicator);
//   3. load the folded state into the fresh queue (Queue::Recover): the
//      sequence continues where the log ends, so leasing resumes only on a
//      fully replayed queue.
// A corrupt log fails Attach (DATA_LOSS naming the position): the node refuses
// to start instead of serving a queue with holes.
//
// Durable acknowledgements (durableAck: true): AwaitDurable() is the
// service's hook; mutating procedures answer only once the log holds their
// events, and answer UNAVAILABLE (replication-write-failed) while it cannot be
// written.
// Thread-safety: Attach runs during Build (single-threaded); the rest is
// thread-safe.
#include <grpcpp/security/credentials.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "nlohmann/json.hpp"
#include "omnirelay/config/config.h"
#include "omnirelay/replication/deterministic.h"
#include "omnirelay/replication/recovery.h"
#include "omnirelay/replication/replicator.h"
#include "omnirelay/resourcelease/queue.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::node {

// Where and how to dial the replication hub (`replication.hub`), by the
// scheme rule of every outbound: https:// / grpcs:// are TLS with the node's
// omniRelay.tls (system store without it); host:port and http:// plaintext.
struct HubTargetChoice {
  std::string address;                                    // host:port
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null = plaintext
};
absl::StatusOr<HubTargetChoice> HubTarget(std::string_view hub,
                                          const std::optional<tls::TlsOptions>& tls);

class ResourceLeaseReplication {
 public:
  static absl::StatusOr<std::unique_ptr<ResourceLeaseReplication>> Create(
      const config::ResourceLeaseReplicationConfig& config, std::shared_ptr<core::Clock> clock,
      std::shared_ptr<core::MetricsRegistry> metrics,
      const std::optional<tls::TlsOptions>& tls = std::nullopt);
  ~ResourceLeaseReplication();

  absl::Status Attach(resourcelease::Queue& queue);
  // For resourcelease::ServiceOptions::await_durable (null without durableAck).
  std::function<void(std::uint64_t, std::function<void(absl::Status)>)> AwaitDurable(
      std::string queue) const;
  // For resourcelease::ServiceOptions::admit_enqueue (null without maxBuffered):
  // RESOURCE_EXHAUSTED / replication-backlog with retry-after while the queue
  // has maxBuffered or more events not yet durable.
  std::function<absl::Status()> AdmitEnqueue(std::string queue) const;
  // The body of GET /omnirelay/control/replication/checkpoint.
  nlohmann::json Checkpoints() const;
  // Writes what is buffered and stops the writer (node stop).
  void Close();

  replication::Replicator& replicator() { return *replicator_; }

 private:
  ResourceLeaseReplication() = default;

  config::ResourceLeaseReplicationConfig config_;
  std::shared_ptr<core::Clock> clock_;
  std::shared_ptr<replication::Replicator> replicator_;
  std::shared_ptr<replication::DeterministicCoordinator> coordinator_;  // null: kind none
  std::shared_ptr<replication::CheckpointingSink> checkpoint_;
  std::map<std::string, replication::ReplayReport> replays_;
};

}  // namespace omnirelay::node
