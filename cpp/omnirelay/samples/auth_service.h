#pragma once
// The auth sample service: Login of the my_service API (issue 6).
//
//   Login(username, password, session_id) → token, expires_at, role
// Errors (exact messages; docs/session-gateway.md):
//   INVALID_ARGUMENT  "username is required"      (checked first)
//   INVALID_ARGUMENT  "session_id is required"
//   PERMISSION_DENIED "invalid username or password"  (unknown user or wrong password)
//   INTERNAL          "user store unavailable"    (SQLite failure; details logged)
// The token is an HS256 JWT (auth/jwt.h) binding user, role and session id,
// valid for `token_ttl`. The MyService* methods are not implemented here.
// Thread-safety: handlers run concurrently; the store and codec are thread-safe.
#include <memory>

#include "my_service/my_service.grpc.pb.h"
#include "omnirelay/auth/jwt.h"
#include "omnirelay/auth/user_store.h"

namespace omnirelay::samples {

struct AuthServiceOptions {
  core::Duration token_ttl = std::chrono::hours(1);
};

class AuthService final : public my_service::MyServiceAPI::Service {
 public:
  AuthService(std::shared_ptr<auth::UserStore> users, std::shared_ptr<const auth::JwtCodec> codec,
              AuthServiceOptions options = {});

  grpc::Status Login(grpc::ServerContext* context, const my_service::LoginRequest* request,
                     my_service::LoginResponse* response) override;

 private:
  std::shared_ptr<auth::UserStore> users_;
  std::shared_ptr<const auth::JwtCodec> codec_;
  AuthServiceOptions options_;
};

}  // namespace omnirelay::samples
