#include "omnirelay/tls/tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "omnirelay/core/logging.h"

namespace omnirelay::tls {
namespace ssl = boost::asio::ssl;
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& key, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(key + " '" + path + "': cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

struct BioDeleter {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Deleter {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

X509Ptr FirstCert(std::string_view pem) {
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return X509Ptr(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

std::string Hex(const unsigned char* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 0xf]);
  }
  return out;
}

std::string Asn1Text(const ASN1_STRING* value) {
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                     static_cast<size_t>(ASN1_STRING_length(value)));
}

// mtime + size of a file, "" when missing.
std::string FileStamp(const std::string& path) {
  if (path.empty()) return "-";
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "missing";
  return std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + "/" +
         std::to_string(st.st_size);
}

void ConfigureVerify(ssl::context& context, ClientAuth mode) {
  switch (mode) {
    case ClientAuth::kNone:
      context.set_verify_mode(ssl::verify_none);
      break;
    case ClientAuth::kRequest:
      context.set_verify_mode(ssl::verify_peer);
      break;
    case ClientAuth::kRequire:
      context.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
      break;
  }
}

absl::Status LoadIdentity(ssl::context& context, const TlsOptions& options) {
  boost::system::error_code ec;
  context.use_certificate_chain_file(options.cert_file, ec);
  if (ec) {
    return absl::InvalidArgumentError("certFile '" + options.cert_file +
                                      "': not a PEM certificate chain (" + ec.message() + ")");
  }
  context.use_private_key_file(options.key_file, ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError("keyFile '" + options.key_file +
                                      "': not a PEM private key (" + ec.message() + ")");
  }
  if (SSL_CTX_check_private_key(context.native_handle()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("keyFile '" + options.key_file +
                                      "': does not match certFile '" + options.cert_file + "'");
  }
  return absl::OkStatus();
}

absl::Status LoadCa(ssl::context& context, const TlsOptions& options) {
  boost::system::error_code ec;
  context.load_verify_file(options.ca_file, ec);
  if (ec) {
    return absl::InvalidArgumentError("caFile '" + options.ca_file + "': not a PEM CA bundle (" +
                                      ec.message() + ")");
  }
  return absl::OkStatus();
}

}  // namespace

std::optional<ClientAuth> ParseClientAuth(std::string_view text) {
  if (text == "none") return ClientAuth::kNone;
  if (text == "request") return ClientAuth::kRequest;
  if (text == "require") return ClientAuth::kRequire;
  return std::nullopt;
}

std::string_view ClientAuthName(ClientAuth mode) {
  switch (mode) {
    case ClientAuth::kNone:
      return "none";
    case ClientAuth::kRequest:
      return "request";
    case ClientAuth::kRequire:
      return "require";
  }
  return "none";
}

absl::Status Validate(const TlsOptions& options, bool need_identity) {
  if (need_identity || !options.cert_file.empty() || !options.key_file.empty()) {
    if (options.cert_file.empty()) return absl::InvalidArgumentError("certFile: is required");
    if (options.key_file.empty()) return absl::InvalidArgumentError("keyFile: is required");
    auto cert = ReadFile("certFile", options.cert_file);
    if (!cert.ok()) return cert.status();
    auto key = ReadFile("keyFile", options.key_file);
    if (!key.ok()) return key.status();
    ssl::context context(ssl::context::tls);
    if (auto s = LoadIdentity(context, options); !s.ok()) return s;
  }
  if (!options.ca_file.empty()) {
    auto ca = ReadFile("caFile", options.ca_file);
    if (!ca.ok()) return ca.status();
    ssl::context context(ssl::context::tls);
    if (auto s = LoadCa(context, options); !s.ok()) return s;
  }
  if (options.client_auth != ClientAuth::kNone && options.ca_file.empty()) {
    return absl::InvalidArgumentError("caFile: is required when clientCertificate is '" +
                                      std::string(ClientAuthName(options.client_auth)) + "'");
  }
  return absl::OkStatus();
}

PeerIdentity IdentityOf(X509* cert) {
  PeerIdentity identity;
  if (cert == nullptr) return identity;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (X509_digest(cert, EVP_sha256(), digest, &length) == 1)
    identity.thumbprint = Hex(digest, length);
  std::string uri, dns;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
      if (name->type == GEN_URI && uri.empty()) uri = Asn1Text(name->d.uniformResourceIdentifier);
      if (name->type == GEN_DNS && dns.empty()) dns = Asn1Text(name->d.dNSName);
    }
    GENERAL_NAMES_free(names);
  }
  identity.san = !uri.empty() ? uri : dns;
  if (identity.san.empty()) {
    char cn[256] = {0};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn)) >
        0) {
      identity.san = cn;
    }
  }
  return identity;
}

PeerIdentity IdentityOfPem(std::string_view pem) {
  X509Ptr cert = FirstCert(pem);
  return IdentityOf(cert.get());
}

PeerIdentity PeerOf(SSL* ssl) {
  if (ssl == nullptr) return {};
  if (SSL_get_verify_result(ssl) != X509_V_OK) return {};
  X509Ptr cert(SSL_get1_peer_certificate(ssl));
  return IdentityOf(cert.get());
}

std::string HandshakeFailure(SSL* ssl, const std::string& fallback) {
  // The verification result lives on the SSL object; OpenSSL's error queue is
  // per thread and a coroutine may resume elsewhere, so only the caller's
  // error text (asio's error_code message) is used otherwise.
  ERR_clear_error();
  if (ssl != nullptr) {
    const long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) return X509_verify_cert_error_string(verify);
  }
  return fallback;
}

absl::StatusOr<std::shared_ptr<ssl::context>> MakeContext(const TlsOptions& options, Role role) {
  const bool server = role == Role::kServer;
  auto context =
      std::make_shared<ssl::context>(server ? ssl::context::tls_server : ssl::context::tls_client);
  context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                       ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  if (server || !options.cert_file.empty()) {
    if (auto s = LoadIdentity(*context, options); !s.ok()) return s;
  }
  if (!options.ca_file.empty()) {
    if (auto s = LoadCa(*context, options); !s.ok()) return s;
  } else if (!server) {
    context->set_default_verify_paths();
  }
  if (!server) {
    context->set_verify_mode(ssl::verify_peer);
    return context;
  }
  if (!options.ca_file.empty()) {
    // Tell clients which CAs we accept (their certificate selection uses it).
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(context->native_handle(), names);
    }
  }
  ConfigureVerify(*context, options.client_auth);
  // OpenSSL refuses verify_peer with session caching unless the session id
  // context is set.
  static constexpr unsigned char kSessionContext[] = "omnirelay";
  SSL_CTX_set_session_id_context(context->native_handle(), kSessionContext,
                                 sizeof(kSessionContext) - 1);
  return context;
}

absl::StatusOr<std::shared_ptr<ContextSource>> ContextSource::Create(TlsOptions options,
                                                                     Role role) {
  if (auto s = Validate(options, /*need_identity=*/role == Role::kServer); !s.ok()) return s;
  std::shared_ptr<ContextSource> source(new ContextSource(std::move(options), role));
  auto context = MakeContext(source->options_, role);
  if (!context.ok()) return context.status();
  source->current_ = *context;
  source->fingerprint_ = source->Fingerprint();
  source->next_check_ = std::chrono::steady_clock::now() + source->options_.reload_interval;
  return source;
}

std::string ContextSource::Fingerprint() const {
  return FileStamp(options_.cert_file) + "|" + FileStamp(options_.key_file) + "|" +
         FileStamp(options_.ca_file);
}

std::shared_ptr<ssl::context> ContextSource::Current() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return current_;
  next_check_ = now + options_.reload_interval;
  std::string stamp = Fingerprint();
  if (stamp == fingerprint_) return current_;
  auto rebuilt = MakeContext(options_, role_);
  if (!rebuilt.ok()) {
    // Files mid-rotation (key written, cert not yet): keep the old pair and
    // try again at the next check.
    core::LogWarn("tls.reload_failed", {{"error", std::string(rebuilt.status().message())}});
    return current_;
  }
  current_ = *rebuilt;
  fingerprint_ = std::move(stamp);
  reloads_.fetch_add(1);
  core::LogInfo("tls.reloaded", {{"certFile", options_.cert_file}});
  return current_;
}

void ContextSource::NoteHandshakeFailure(const std::string& reason) {
  handshake_failures_.fetch_add(1);
  std::lock_guard<std::mutex> lock(mu_);
  last_failure_ = reason;
}

std::string ContextSource::last_handshake_failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_failure_;
}

}  // namespace omnirelay::tls
