#pragma once
// gRPC listener with port 0 support for the sample verbs (`omnirelay
// auth|worker|registry`); signals and ready files are core/process.h.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "omnirelay/core/status.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::samples {

// Builds and starts a gRPC server listening on `listen` ("host:port", port 0 =
// any) with `services`. `bound_address` receives "host:port" with the real
// port. UNAVAILABLE if the address cannot be bound. With `tls` the listener
// serves TLS (tls/grpc_credentials.h: certificates reload on change;
// ClientAuth::kRequire = mTLS, a client without a certificate from the CA
// fails the handshake); without it, plaintext.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    std::string* bound_address, const std::optional<tls::TlsOptions>& tls = std::nullopt);

}  // namespace omnirelay::samples
