#include "omnirelay/node/control_service.h"

#include <openssl/crypto.h>

#include "absl/strings/numbers.h"
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

  void AttachShards(ShardControl shards) {
    std::lock_guard lock(mu_);
    shards_ = std::move(shards);
  }

  grpc::Status Rebalance(grpc::ServerContext* context, const mesh::v1::RebalanceRequest* request,
                         mesh::v1::RebalanceResponse* response) override {
    if (auto denied = Authorize(*context); !denied.ok()) return denied;
    auto shards = Shards();
    if (!shards.rebalance) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "shards are not configured on this node (omniRelay.shards)");
    }
    auto answer = shards.rebalance(request->namespace_(), request->shard(), request->to(),
                                   std::chrono::milliseconds(request->timeout_ms()));
    if (!answer.ok()) return ToGrpc(answer.status());
    const auto& body = *answer;
    response->set_namespace_(body.value("namespace", ""));
    response->set_shard(body.value("shard", 0u));
    response->set_from(body.value("from", ""));
    response->set_to(body.value("to", ""));
    response->set_previous_version(body.value("previousVersion", std::int64_t{0}));
    response->set_version(body.value("version", std::int64_t{0}));
    response->set_elapsed_ms(body.value("elapsedMs", std::int64_t{0}));
    response->set_node(body.value("node", ""));
    // The decision of the version that moved it (it is the latest move of
    // that version; a later move of another shard may have replaced it).
    const auto& decision = body.contains("decision") ? body["decision"] : nlohmann::json();
    if (decision.is_object() && decision.value("shard", -1) == static_cast<int>(request->shard())) {
      response->set_chooser(decision.value("chooser", ""));
      for (const auto& c : decision.value("candidates", nlohmann::json::array())) {
        auto* candidate = response->add_candidates();
        candidate->set_node(c.value("node", ""));
        candidate->set_load_known(c.contains("pending") && c["pending"].is_number());
        if (candidate->load_known()) {
          candidate->set_pending(c["pending"].get<std::int64_t>());
          candidate->set_qps(c.value("qps", 0.0));
        }
        candidate->set_shards_owned(c.value("shardsOwned", 0));
        candidate->set_chosen(c.value("chosen", false));
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status SetShardBudget(grpc::ServerContext* context,
                              const mesh::v1::SetShardBudgetRequest* request,
                              mesh::v1::SetShardBudgetResponse* response) override {
    if (auto denied = Authorize(*context); !denied.ok()) return denied;
    auto shards = Shards();
    if (!shards.set_budget) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "shards are not configured on this node (omniRelay.shards)");
    }
    auto answer = shards.set_budget(
        request->namespace_(),
        request->all_shards() ? std::nullopt : std::optional<std::uint32_t>(request->shard()),
        request->qps());
    if (!answer.ok()) return ToGrpc(answer.status());
    response->set_namespace_(answer->value("namespace", ""));
    response->set_namespace_qps(answer->value("namespaceQps", 0.0));
    const nlohmann::json shard_qps = answer->value("shardQps", nlohmann::json::object());
    for (const auto& [shard, qps] : shard_qps.items()) {
      std::uint32_t id = 0;
      if (absl::SimpleAtoi(shard, &id) && qps.is_number()) {
        (*response->mutable_shard_qps())[id] = qps.get<double>();
      }
    }
    return grpc::Status::OK;
  }

 private:
  ShardControl Shards() {
    std::lock_guard lock(mu_);
    return shards_;
  }

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
  ShardControl shards_;
};

ControlService::ControlService(ControlAuth auth) : impl_(std::make_unique<Impl>(std::move(auth))) {}
ControlService::~ControlService() = default;
grpc::Service* ControlService::service() { return impl_.get(); }
void ControlService::Attach(std::shared_ptr<leadership::LeadershipManager> manager) {
  impl_->Attach(std::move(manager));
}
void ControlService::AttachShards(ShardControl shards) { impl_->AttachShards(std::move(shards)); }

}  // namespace omnirelay::node
