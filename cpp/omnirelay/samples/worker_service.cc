#include "omnirelay/samples/worker_service.h"

#include "omnirelay/auth/secrets.h"
#include "omnirelay/core/logging.h"

namespace omnirelay::samples {
namespace {

constexpr char kServerValue[] = "my_service";
constexpr char kShuttingDown[] = "instance is shutting down";

}  // namespace

std::optional<std::string> Metadata(const grpc::ServerContext& context, const std::string& key) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(key);
  if (it == metadata.end()) return std::nullopt;
  return std::string(it->second.data(), it->second.size());
}

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

WorkerService::WorkerService(WorkerOptions options) : options_(std::move(options)) {}

grpc::Status WorkerService::CallerSession(grpc::ServerContext* context, std::string* session) {
  // The gateway's order and messages (gateway/admission.h): the session
  // first, then one message for every token failure.
  auto session_id = Metadata(*context, "session-id");
  if (!session_id || session_id->empty()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing session-id");
  }
  if (options_.verifier) {
    auto claims =
        auth::VerifyRequest(*options_.verifier, Metadata(*context, "authorization"), session_id);
    if (!claims.ok()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or invalid token");
    }
  }
  *session = std::move(*session_id);
  return grpc::Status::OK;
}

grpc::Status WorkerService::Admit(grpc::ServerContext* context, Binding* binding) {
  std::string session;
  if (auto status = CallerSession(context, &session); !status.ok()) return status;
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, kShuttingDown);
  if (!binding_) {
    auto server_session = auth::RandomHex(8);
    if (!server_session.ok()) return ToGrpc(server_session.status());
    binding_ = Binding{session, options_.instance + "-" + *server_session};
    core::LogInfo("worker.session_bound", {{"instance", options_.instance},
                                           {"clientSession", binding_->client_session},
                                           {"serverSession", binding_->server_session}});
  } else if (binding_->client_session != session) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "Session conflict: was=" + binding_->client_session + ", now=" + session);
  }
  *binding = *binding_;
  return grpc::Status::OK;
}

grpc::Status WorkerService::MyServiceEcho(grpc::ServerContext* context,
                                          const my_service::EchoRequest* request,
                                          my_service::EchoResponse* response) {
  Binding binding;
  if (auto status = Admit(context, &binding); !status.ok()) return status;
  response->set_client_value(request->value());
  response->set_server_value(kServerValue);
  response->set_pod_name(options_.instance);
  response->set_server_session_id(binding.server_session);
  response->set_client_session_id(binding.client_session);
  response->set_index(0);
  response->set_server_method("MyServiceEcho");
  return grpc::Status::OK;
}

grpc::Status WorkerService::MyServiceSubscribe(
    grpc::ServerContext* context, const my_service::EchoRequest* request,
    grpc::ServerWriter<my_service::EchoResponse>* writer) {
  Binding binding;
  if (auto status = Admit(context, &binding); !status.ok()) return status;
  my_service::EchoResponse response;
  response.set_client_value(request->value());
  response.set_server_value(kServerValue);
  response.set_pod_name(options_.instance);
  response.set_server_session_id(binding.server_session);
  response.set_client_session_id(binding.client_session);
  response.set_server_method("MyServiceSubscribe");
  for (int index = 0; options_.stream_max_messages <= 0 || index < options_.stream_max_messages;
       ++index) {
    if (context->IsCancelled()) return grpc::Status::CANCELLED;
    response.set_index(index);
    if (!writer->Write(response)) return grpc::Status::CANCELLED;  // client gone
    // Wait one interval, waking early on Stop(). The sync API has no
    // cancellation callback, so a cancelled client is noticed at the next
    // tick — at most one interval late.
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_cv_.wait_for(lock, options_.stream_interval, [this] { return stopping_; })) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, kShuttingDown);
    }
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::MyServiceShutdown(grpc::ServerContext* context,
                                              const my_service::ShutdownRequest*,
                                              my_service::ShutdownResponse* response) {
  std::string session;
  if (auto status = CallerSession(context, &session); !status.ok()) return status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, kShuttingDown);
    if (!binding_) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "Server session is not set");
    }
    if (binding_->client_session != session) {
      return grpc::Status(
          grpc::StatusCode::PERMISSION_DENIED,
          "Client session mismatch: client=" + session + ", server=" + binding_->client_session);
    }
    response->set_pod_name(options_.instance);
    response->set_server_session_id(binding_->server_session);
    response->set_client_session_id(binding_->client_session);
    response->set_index(0);
    response->set_server_method("MyServiceShutdown");
    // From here on the instance refuses new work; its streams end.
    stopping_ = true;
  }
  stop_cv_.notify_all();
  core::LogInfo("worker.shutdown_requested",
                {{"instance", options_.instance}, {"clientSession", session}});
  // The reply is sent after this handler returns; the callback only signals
  // the owner, which stops the server with a grace period that lets the
  // reply go out (grpc::Server::Shutdown waits for in-flight calls).
  if (options_.on_shutdown) options_.on_shutdown();
  return grpc::Status::OK;
}

void WorkerService::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
}

std::optional<std::string> WorkerService::bound_session() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!binding_) return std::nullopt;
  return binding_->client_session;
}

std::string WorkerService::server_session_id() const {
  std::lock_guard<std::mutex> lock(mu_);
  return binding_ ? binding_->server_session : std::string();
}

}  // namespace omnirelay::samples
