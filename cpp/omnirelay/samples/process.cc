#include "omnirelay/samples/process.h"

#include "omnirelay/samples/registry_client.h"
#include "omnirelay/tls/grpc_credentials.h"

namespace omnirelay::samples {

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    std::string* bound_address, const std::optional<tls::TlsOptions>& tls) {
  auto split = SplitHostPort(listen);
  if (!split.ok()) return split.status();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(
      listen, tls ? tls::GrpcServerCredentials(*tls) : grpc::InsecureServerCredentials(), &port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError("cannot listen on " + listen);
  }
  const std::string& host = split->first;
  *bound_address =
      (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  return server;
}

}  // namespace omnirelay::samples
