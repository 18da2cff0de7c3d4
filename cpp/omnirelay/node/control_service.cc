#include "omnirelay/node/control_service.h"

#include <openssl/crypto.h>

#include "omnirelay/mesh/v1/control.grpc.pb.h"

namespace omnirelay::node {
namespace {

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

bool SameToken(std::string_view given, const std::string& expected) {
  return !expected.empty() && given.size() == expected.size() &&
         CRYPTO_memcmp(given.data(), expected.data(), given.size()) == 0;
}

}  // namespace

class ControlService::Impl final : public mesh::v1::Control::Service {
 public:
  explicit Impl(ControlAuth auth) : auth_(std::move(auth)) {}

  void Attach(std::shared_ptr<leadership::LeadershipManager> manager) {
    std::lock_guard lock(mu_);
    manager_ = std::move(manager);
  }

  grpc::Status Promote(grpc::ServerContext* context, const mesh::v1::PromoteRequest* request,
                       mesh::v1::PromoteResponse* response) override {
    if (auto denied = Authorize(*context); !denied.ok()) return denied;
    std::shared_ptr<leadership::LeadershipManager> manager;
    {
      std::lock_guard lock(mu_);
      manager = manager_;
    }
    if (!manager) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "leadership is not configured on this node");
    }
    if (auto status = manager->Promote(request->scope(), request->node()); !status.ok()) {
      return ToGrpc(status);
    }
    response->set_scope(request->scope());
    response->set_node(request->node());
    for (const auto& scope : manager->Scopes()) {
      if (scope.scope != request->scope()) continue;
      if (scope.leader) {
        response->set_current_leader(scope.leader->node);
        response->set_current_fencing_token(scope.leader->fencing_token);
      }
    }
    return grpc::Status::OK;
  }

 private:
  grpc::Status Authorize(const grpc::ServerContext& context) const {
    // A verified client certificate is a credential (the listener only
    // accepts such peers when it requires them).
    if (auth_.mtls_clients && context.auth_context() &&
        context.auth_context()->IsPeerAuthenticated()) {
      return grpc::Status::OK;
    }
    const auto& metadata = context.client_metadata();
    auto it = metadata.find("authorization");
    if (it != metadata.end()) {
      std::string_view value(it->second.data(), it->second.size());
      if (value.size() > 7 && (value.starts_with("Bearer ") || value.starts_with("bearer ")) &&
          SameToken(value.substr(7), auth_.token)) {
        return grpc::Status::OK;
      }
    }
    if (auth_.token.empty() && !auth_.mtls_clients) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "the control plane is closed: configure omniRelay.admin.tokenFile or "
                          "mTLS (omniRelay.tls.clientCertificate)");
    }
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "needs authorization: Bearer <token of omniRelay.admin.tokenFile> or a "
                        "verified client certificate");
  }

  const ControlAuth auth_;
  std::mutex mu_;
  std::shared_ptr<leadership::LeadershipManager> manager_;
};

ControlService::ControlService(ControlAuth auth) : impl_(std::make_unique<Impl>(std::move(auth))) {}
ControlService::~ControlService() = default;
grpc::Service* ControlService::service() { return impl_.get(); }
void ControlService::Attach(std::shared_ptr<leadership::LeadershipManager> manager) {
  impl_->Attach(std::move(manager));
}

}  // namespace omnirelay::node
