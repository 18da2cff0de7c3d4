#pragma once
// TLS and mTLS for every transport (docs/security.md).
//
// One `TlsOptions` value describes a node's certificate (cert + key), the CA
// it trusts (for peers' certificates) and, on listeners, whether a client
// certificate is ignored, requested or required (mTLS). The same value
// configures:
//   * Boost.Beast listeners (HTTP inbound, admin): ContextSource hands
//     out an ssl::context per new connection and rebuilds it when one of the
//     files changes (checked at most once per reload interval), so rotated
//     certificates apply to new connections without a restart; connections
//     already open keep the context they were accepted with.
//   * Beast clients (HTTP outbound, registry client): ContextSource too.
//   * gRPC listeners and channels (grpc_credentials.h): gRPC's own
//     FileWatcherCertificateProvider reloads the same files.
//
// Peer verification: a client certificate must chain to `ca_file`; a server
// certificate must chain to `ca_file` (or the system store when empty) and
// match the host name or IP address dialled.
//
// Thread-safety: ContextSource::Current and the free functions are
// thread-safe; contexts are immutable once built.
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <atomic>
#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/status.h"
#include "omnirelay/tls/identity.h"

namespace omnirelay::tls {

enum class ClientAuth { kNone, kRequest, kRequire };
// "none" | "request" | "require"; nullopt for anything else.
std::optional<ClientAuth> ParseClientAuth(std::string_view text);
std::string_view ClientAuthName(ClientAuth mode);

struct TlsOptions {
  std::string cert_file{};  // PEM certificate chain (leaf first)
  std::string key_file{};   // PEM private key of the leaf
  std::string ca_file{};    // PEM CA bundle that peers' certificates must chain to
  ClientAuth client_auth = ClientAuth::kNone;  // listeners only
  core::Duration reload_interval = std::chrono::seconds(1);
};

// Checks that the files exist, parse, and that the key matches the
// certificate. Errors name the file ("certFile '/x': no such file").
// `need_identity` = cert and key are required (listeners).
absl::Status Validate(const TlsOptions& options, bool need_identity);

// The verified identity of a certificate.
PeerIdentity IdentityOf(X509* cert);
// Identity of the first certificate of a PEM text (gRPC's x509_pem_cert).
PeerIdentity IdentityOfPem(std::string_view pem);
// The identity of the peer of an established connection, empty when the peer
// sent no certificate or it did not verify.
PeerIdentity PeerOf(SSL* ssl);

// Why a handshake failed, in words: the peer-certificate verification result
// when that failed ("certificate has expired", "unable to get local issuer
// certificate", ...), else `fallback` (the handshake's error_code message,
// e.g. "peer did not return a certificate").
std::string HandshakeFailure(SSL* ssl, const std::string& fallback);

enum class Role { kServer, kClient };

// Beast contexts, rebuilt when the files change. A server context presents
// cert/key and verifies clients per `client_auth`; a client context verifies
// the server against `ca_file` (the system store when empty) and presents
// cert/key when given (mTLS).
class ContextSource {
 public:
  static absl::StatusOr<std::shared_ptr<ContextSource>> Create(TlsOptions options, Role role);

  // The context for a new connection. Rebuilds it first when a file's mtime
  // or size changed since the last build (checked at most once per reload
  // interval); a rebuild that fails (half-written files) keeps the previous
  // context and is retried on the next check.
  std::shared_ptr<boost::asio::ssl::context> Current();
  int64_t reloads() const { return reloads_.load(); }
  const TlsOptions& options() const { return options_; }
  Role role() const { return role_; }

  // The last handshake failure seen by a listener or client using this
  // source (tests, logs, introspection).
  void NoteHandshakeFailure(const std::string& reason);
  std::string last_handshake_failure() const;
  int64_t handshake_failures() const { return handshake_failures_.load(); }

 private:
  ContextSource(TlsOptions options, Role role) : options_(std::move(options)), role_(role) {}
  std::string Fingerprint() const;

  TlsOptions options_;
  Role role_;
  mutable std::mutex mu_;
  std::shared_ptr<boost::asio::ssl::context> current_;
  std::string fingerprint_;
  std::chrono::steady_clock::time_point next_check_{};
  std::atomic<int64_t> reloads_{0};
  std::atomic<int64_t> handshake_failures_{0};
  std::string last_failure_;
};

// Builds one context (no reload); used by ContextSource.
absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> MakeContext(const TlsOptions& options,
                                                                       Role role);

}  // namespace omnirelay::tls
