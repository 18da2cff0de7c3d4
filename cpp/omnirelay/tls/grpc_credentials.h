#pragma once
// gRPC credentials from TlsOptions (see tls.h). Both use gRPC's
// FileWatcherCertificateProvider over the same files, so rotated
// certificates apply to new handshakes without a restart (gRPC re-reads the
// files every reload interval, rounded up to whole seconds).
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/config.h>

#include <memory>

#include "omnirelay/tls/tls.h"

namespace grpc {
class AuthContext;
}

namespace omnirelay::tls {

// Listener credentials: cert/key, client certificates per `client_auth`
// (require = mTLS: a client without a certificate chaining to ca_file fails
// the handshake).
std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials(const TlsOptions& options);

// Channel credentials: verifies the server against ca_file (the system store
// when empty) and its name against the target's host; presents cert/key when
// given (mTLS).
std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials(const TlsOptions& options);

// The verified client certificate of a server call, empty without one.
PeerIdentity GrpcPeerIdentity(const grpc::AuthContext* context);

}  // namespace omnirelay::tls
