#include "omnirelay/cli/tls_flags.h"

namespace omnirelay::cli {

void AddTlsFlags(CLI::App* command, TlsFlags* flags, bool listener) {
  command->add_option("--tls-cert-file", flags->cert_file,
                      listener ? "PEM certificate chain to serve TLS with"
                               : "PEM client certificate to present (mTLS)");
  command->add_option("--tls-key-file", flags->key_file, "PEM private key of --tls-cert-file");
  command->add_option("--tls-ca-file", flags->ca_file,
                      listener ? "PEM CA bundle client certificates must chain to"
                               : "PEM CA bundle the server certificate must chain to "
                                 "(default: the system store)");
  if (listener) {
    command
        ->add_option("--tls-client-cert", flags->client_cert,
                     "none|request|require: whether clients must present a certificate (mTLS)")
        ->capture_default_str();
  }
}

absl::StatusOr<std::optional<tls::TlsOptions>> TlsOptionsFromFlags(const TlsFlags& flags,
                                                                   bool listener) {
  const auto client_auth = tls::ParseClientAuth(flags.client_cert);
  if (!client_auth) {
    return absl::InvalidArgumentError("--tls-client-cert: '" + flags.client_cert +
                                      "' is not none, request or require");
  }
  if (!flags.any() || (!listener && flags.cert_file.empty())) {
    if (*client_auth != tls::ClientAuth::kNone) {
      return absl::InvalidArgumentError(
          "--tls-client-cert needs --tls-cert-file and --tls-key-file");
    }
    if (!flags.any()) return std::optional<tls::TlsOptions>();
  }
  if (flags.cert_file.empty() != flags.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert-file and --tls-key-file go together");
  }
  if (listener && flags.cert_file.empty()) {
    return absl::InvalidArgumentError("a TLS listener needs --tls-cert-file and --tls-key-file");
  }
  if (*client_auth == tls::ClientAuth::kRequire && flags.ca_file.empty()) {
    return absl::InvalidArgumentError("--tls-client-cert require needs --tls-ca-file");
  }
  tls::TlsOptions options{.cert_file = flags.cert_file,
                          .key_file = flags.key_file,
                          .ca_file = flags.ca_file,
                          .client_auth = listener ? *client_auth : tls::ClientAuth::kNone};
  if (auto status = tls::Validate(options, /*need_identity=*/listener); !status.ok()) {
    // Validate names config keys ("certFile '/x': ..."); say the flag instead.
    std::string message(status.message());
    for (const auto& [key, flag] :
         {std::pair{"certFile", "--tls-cert-file"}, std::pair{"keyFile", "--tls-key-file"},
          std::pair{"caFile", "--tls-ca-file"}}) {
      if (message.starts_with(key)) message = flag + message.substr(std::string_view(key).size());
    }
    return absl::InvalidArgumentError(message);
  }
  return std::optional<tls::TlsOptions>(std::move(options));
}

}  // namespace omnirelay::cli
