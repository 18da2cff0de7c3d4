#pragma once
// omnirelay.mesh.v1.Control on the node's gRPC listener (proto/omnirelay/
// mesh/v1/control.proto): today the Promote RPC, the gRPC twin of the admin
// endpoint POST /omnirelay/control/promote, with the same authorization
// (docs/security.md): a verified client certificate (mTLS listener), or
// `authorization: Bearer <omniRelay.admin.tokenFile>` metadata; with neither
// configured the control plane is closed (PERMISSION_DENIED).
//
// Threading: gRPC's sync server threads call it; the manager is attached
// once leadership has started (before that, and on nodes without
// leadership, Promote answers FAILED_PRECONDITION).
#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <string>

#include "omnirelay/leadership/manager.h"

namespace omnirelay::node {

struct ControlAuth {
  std::string token;          // admin bearer token; empty = none configured
  bool mtls_clients = false;  // the gRPC listener verifies client certificates
};

class ControlService {
 public:
  explicit ControlService(ControlAuth auth);
  ~ControlService();
  grpc::Service* service();
  void Attach(std::shared_ptr<leadership::LeadershipManager> manager);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace omnirelay::node
