#pragma once
// The identity of a TLS peer whose certificate was verified against the
// configured CA: the principal the middleware binds (`rpc.principal`) and
// the admin control plane accepts. Header-only value type, no OpenSSL here,
// so request structs can carry it cheaply.
#include <string>

namespace omnirelay::tls {

struct PeerIdentity {
  // First URI SAN (e.g. spiffe://omnirelay/node-1), else the first DNS SAN,
  // else the subject's CN; empty when the certificate has none of them.
  std::string san{};
  // Lower-case hex SHA-256 of the certificate's DER encoding.
  std::string thumbprint{};

  bool empty() const { return thumbprint.empty(); }
  // What identifies the peer: the SAN when present, else "sha256:<thumbprint>".
  std::string Principal() const { return san.empty() ? "sha256:" + thumbprint : san; }
};

}  // namespace omnirelay::tls
