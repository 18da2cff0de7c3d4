#include "omnirelay/tls/grpc_credentials.h"

#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

namespace omnirelay::tls {
namespace {

unsigned int RefreshSeconds(const TlsOptions& options) {
  const auto seconds = std::chrono::ceil<std::chrono::seconds>(options.reload_interval).count();
  return static_cast<unsigned int>(std::max<int64_t>(1, seconds));
}

}  // namespace

std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials(const TlsOptions& options) {
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
  if (options.ca_file.empty()) {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        options.key_file, options.cert_file, RefreshSeconds(options));
  } else {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        options.key_file, options.cert_file, options.ca_file, RefreshSeconds(options));
  }
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_identity_key_cert_pairs();
  if (!options.ca_file.empty()) tls.watch_root_certs();
  switch (options.client_auth) {
    case ClientAuth::kNone:
      tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
      break;
    case ClientAuth::kRequest:
      tls.set_cert_request_type(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
      break;
    case ClientAuth::kRequire:
      tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
      break;
  }
  return grpc::experimental::TlsServerCredentials(tls);
}

std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials(const TlsOptions& options) {
  if (options.ca_file.empty() && options.cert_file.empty()) {
    return grpc::SslCredentials(grpc::SslCredentialsOptions());  // system roots
  }
  grpc::experimental::TlsChannelCredentialsOptions tls;
  if (!options.ca_file.empty() || !options.cert_file.empty()) {
    auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        options.key_file, options.cert_file, options.ca_file, RefreshSeconds(options));
    tls.set_certificate_provider(provider);
    if (!options.ca_file.empty()) tls.watch_root_certs();
    if (!options.cert_file.empty()) tls.watch_identity_key_cert_pairs();
  }
  tls.set_verify_server_certs(true);
  tls.set_check_call_host(true);
  return grpc::experimental::TlsCredentials(tls);
}

PeerIdentity GrpcPeerIdentity(const grpc::AuthContext* context) {
  if (context == nullptr || !context->IsPeerAuthenticated()) return {};
  auto pem = context->FindPropertyValues("x509_pem_cert");
  if (pem.empty()) return {};
  return IdentityOfPem(std::string_view(pem.front().data(), pem.front().size()));
}

}  // namespace omnirelay::tls
