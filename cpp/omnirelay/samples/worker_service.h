#pragma once
// The worker sample (the MyService role of issue 6): a stateful instance that
// serves exactly one client session at a time.
//
// Session rules (exact messages; docs/session-gateway.md):
//   * The instance binds to the first session that calls Echo or Subscribe
//     (the `session-id` metadata) and generates its own server_session_id.
//   * Echo/Subscribe from another session → INTERNAL
//     "Session conflict: was={bound}, now={caller}".
//   * Shutdown with no bound session → PERMISSION_DENIED "Server session is not set";
//     from another session → PERMISSION_DENIED
//     "Client session mismatch: client={caller}, server={bound}".
//   * A successful Shutdown answers, then calls `on_shutdown` (the CLI stops
//     the server and exits 0, so the supervisor restarts a fresh instance);
//     calls arriving in between get UNAVAILABLE "instance is shutting down",
//     which a gateway treats like the connection failure that follows.
//   * No `session-id` metadata → UNAUTHENTICATED "missing session-id"
//     (checked first; with a verifier, then any token failure →
//     UNAUTHENTICATED "missing or invalid token", as the gateway answers).
// A Shutdown never binds: it is not a session's first call.
//
// With `verifier` set the worker also checks the JWT itself (defence in
// depth when a route is configured without gateway authorization); the
// gateway normally does this (auth::VerifyRequest).
//
// Subscribe sends index 0 at once, then one message every `stream_interval`
// (5 s by default, the reference's subscription period)
// until the client cancels, `stream_max_messages` were sent (then OK), or
// Stop() (then UNAVAILABLE "instance is shutting down").
//
// Thread-safety: gRPC calls handlers concurrently; the session state is under
// one mutex. Login is not implemented here (UNIMPLEMENTED): it is the auth
// service's method.
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "my_service/my_service.grpc.pb.h"
#include "omnirelay/auth/jwt.h"

namespace omnirelay::samples {

struct WorkerOptions {
  std::string instance = "worker";  // pod_name
  std::chrono::milliseconds stream_interval{5000};
  int stream_max_messages = 10000;                 // 0 = until cancelled
  std::shared_ptr<const auth::JwtCodec> verifier;  // optional
  std::function<void()> on_shutdown;               // after a successful Shutdown
};

class WorkerService final : public my_service::MyServiceAPI::Service {
 public:
  explicit WorkerService(WorkerOptions options);

  grpc::Status MyServiceEcho(grpc::ServerContext* context, const my_service::EchoRequest* request,
                             my_service::EchoResponse* response) override;
  grpc::Status MyServiceSubscribe(grpc::ServerContext* context,
                                  const my_service::EchoRequest* request,
                                  grpc::ServerWriter<my_service::EchoResponse>* writer) override;
  grpc::Status MyServiceShutdown(grpc::ServerContext* context,
                                 const my_service::ShutdownRequest* request,
                                 my_service::ShutdownResponse* response) override;

  // Ends running streams and refuses new calls. Idempotent.
  void Stop();

  // The bound client session id and the generated server session id.
  std::optional<std::string> bound_session() const;
  std::string server_session_id() const;

 private:
  struct Binding {
    std::string client_session;
    std::string server_session;
  };
  // Checks metadata (and the token, with a verifier), then binds or checks
  // the session. On success fills `binding`.
  grpc::Status Admit(grpc::ServerContext* context, Binding* binding);
  grpc::Status CallerSession(grpc::ServerContext* context, std::string* session);

  WorkerOptions options_;
  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  std::optional<Binding> binding_;
  bool stopping_ = false;
};

// Reads one metadata value (gRPC lower-cases keys); nullopt when absent.
std::optional<std::string> Metadata(const grpc::ServerContext& context, const std::string& key);

// absl::Status → grpc::Status (the codes are numerically identical).
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace omnirelay::samples
