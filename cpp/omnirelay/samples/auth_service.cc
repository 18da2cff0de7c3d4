#include "omnirelay/samples/auth_service.h"

#include <chrono>

#include "omnirelay/core/logging.h"
#include "omnirelay/samples/worker_service.h"

namespace omnirelay::samples {

AuthService::AuthService(std::shared_ptr<auth::UserStore> users,
                         std::shared_ptr<const auth::JwtCodec> codec, AuthServiceOptions options)
    : users_(std::move(users)), codec_(std::move(codec)), options_(options) {}

grpc::Status AuthService::Login(grpc::ServerContext*, const my_service::LoginRequest* request,
                                my_service::LoginResponse* response) {
  if (request->username().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "username is required");
  }
  if (request->session_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "session_id is required");
  }
  auto role = users_->Authenticate(request->username(), request->password());
  if (!role.ok()) {
    if (role.status().code() == absl::StatusCode::kPermissionDenied) {
      core::LogInfo("auth.login_denied", {{"username", request->username()}});
      return ToGrpc(role.status());
    }
    core::LogError("auth.store_error", {{"error", std::string(role.status().message())}});
    return grpc::Status(grpc::StatusCode::INTERNAL, "user store unavailable");
  }
  auth::Claims claims;
  auto token =
      codec_->Issue(request->username(), request->session_id(), *role, options_.token_ttl, &claims);
  if (!token.ok()) {
    core::LogError("auth.sign_error", {{"error", std::string(token.status().message())}});
    return grpc::Status(grpc::StatusCode::INTERNAL, "cannot issue token");
  }
  response->set_token(*token);
  response->set_role(*role);
  const auto seconds =
      std::chrono::duration_cast<std::chrono::seconds>(claims.expires_at.time_since_epoch());
  response->mutable_expires_at()->set_seconds(seconds.count());
  response->mutable_expires_at()->set_nanos(0);
  core::LogInfo("auth.login",
                {{"username", request->username()}, {"sessionId", request->session_id()}});
  return grpc::Status::OK;
}

}  // namespace omnirelay::samples
