#pragma once
// TLS flags of the sample verbs (`auth`, `worker`, `registry`) and
// `benchmark`: the same certificate, key, CA and client-certificate mode a
// node takes from `omniRelay.tls` (docs/security.md), as command-line flags.
//
//   --tls-cert-file / --tls-key-file  this process's certificate and key
//                                     (listeners: required for TLS; clients:
//                                     presented for mTLS)
//   --tls-ca-file                     CA bundle the peer must chain to
//   --tls-client-cert none|request|require   listeners only; require = mTLS
//
// No flag given = no TLS (the caller decides whether that is allowed, e.g. an
// https:// target needs TLS).
#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "omnirelay/core/status.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::cli {

struct TlsFlags {
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  std::string client_cert = "none";

  bool any() const { return !cert_file.empty() || !key_file.empty() || !ca_file.empty(); }
};

// Registers the flags; `listener` adds --tls-client-cert.
void AddTlsFlags(CLI::App* command, TlsFlags* flags, bool listener);

// nullopt when no TLS flag was given; else the validated options (files exist
// and parse, key matches certificate; errors name the flag). A listener needs
// cert and key; `require` needs a CA.
absl::StatusOr<std::optional<tls::TlsOptions>> TlsOptionsFromFlags(const TlsFlags& flags,
                                                                   bool listener);

}  // namespace omnirelay::cli
