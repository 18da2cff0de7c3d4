#pragma once
// omnirelay.mesh.v1.Control on the node's gRPC listener (proto/omnirelay/
// mesh/v1/control.proto): Promote, Rebalance and SetShardBudget, the gRPC
// twins of the admin endpoints POST /omnirelay/control/promote,
// .../shards/rebalance and .../shards/budget, with the same authorization
// (docs/security.md): a verified client certificate (mTLS listener), or
// `authorization: Bearer <omniRelay.admin.tokenFile>` metadata; with neither
// configured the control plane is closed (PERMISSION_DENIED).
//
// Threading: gRPC's sync server threads call it; the manager is attached
// once leadership has started (before that, and on nodes without
// leadership, Promote answers FAILED_PRECONDITION).
#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "omnirelay/core/clock.h"
#include "omnirelay/leadership/manager.h"

namespace omnirelay::node {

struct ControlAuth {
  std::string token;          // admin bearer token; empty = none configured
  bool mtls_clients = false;  // the gRPC listener verifies client certificates
};

// The shard calls as the node implements them (Node::RebalanceShard /
// SetShardBudget): JSON answers as the admin endpoints give them.
struct ShardControl {
  std::function<core::StatusOr<nlohmann::json>(const std::string& ns, std::uint32_t shard,
                                               const std::string& to, core::Duration timeout)>
      rebalance;
  std::function<core::StatusOr<nlohmann::json>(const std::string& ns,
                                               std::optional<std::uint32_t> shard, double qps)>
      set_budget;
};

class ControlService {
 public:
  explicit ControlService(ControlAuth auth);
  ~ControlService();
  grpc::Service* service();
  void Attach(std::shared_ptr<leadership::LeadershipManager> manager);
  // Without it (no omniRelay.shards) the shard calls are FAILED_PRECONDITION.
  void AttachShards(ShardControl shards);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace omnirelay::node
