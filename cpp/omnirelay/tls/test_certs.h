#pragma once
// Test-only: real X.509 certificates made at run time with OpenSSL's API
// (EC P-256), so TLS tests cover valid, expired, wrong-CA and rotated
// certificates without checked-in key material.
#include <string>
#include <vector>

#include "omnirelay/core/status.h"

namespace omnirelay::tls::testing {

struct Pem {
  std::string cert{};
  std::string key{};
};

struct CertSpec {
  std::string common_name{};
  std::vector<std::string> dns{};      // DNS SANs
  std::vector<std::string> ips{};      // IP SANs ("127.0.0.1")
  std::vector<std::string> uris{};     // URI SANs ("spiffe://omnirelay/node-1")
  long not_before_seconds = -3600;     // relative to now
  long not_after_seconds = 24 * 3600;  // relative to now; negative = already expired
  bool is_ca = false;
};

// Self-signed when `issuer` is null, else signed by issuer.
absl::StatusOr<Pem> MakeCertificate(const CertSpec& spec, const Pem* issuer);

// Writes text to path (mode 0600). Aborts the test process on failure.
void WriteFile(const std::string& path, const std::string& text);

// A fresh temporary directory (removed by the caller if wanted).
std::string MakeTempDir(const std::string& prefix);

// A CA plus helpers that write leaf cert/key pairs into `dir`.
struct TestPki {
  std::string dir;
  Pem ca;
  std::string ca_file;  // dir/<name>-ca.crt

  static TestPki Create(const std::string& dir, const std::string& name = "test");
  // Leaf for 127.0.0.1/localhost with URI SAN spiffe://omnirelay/<name>;
  // writes dir/<file>.crt and dir/<file>.key and returns their paths.
  std::pair<std::string, std::string> Leaf(const std::string& name, const std::string& file,
                                           long not_after_seconds = 24 * 3600) const;
};

}  // namespace omnirelay::tls::testing
