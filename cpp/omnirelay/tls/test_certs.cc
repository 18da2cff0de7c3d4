#include "omnirelay/tls/test_certs.h"

// GCC 12 reports a false -Wrestrict in std::string concatenation at -O3 (GCC bug 105329).
#pragma GCC diagnostic ignored "-Wrestrict"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

namespace omnirelay::tls::testing {
namespace {

std::string ToPem(int (*write)(BIO*, void*), void* object) {
  BIO* bio = BIO_new(BIO_s_mem());
  write(bio, object);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(size));
  BIO_free(bio);
  return out;
}

int WriteCert(BIO* bio, void* cert) { return PEM_write_bio_X509(bio, static_cast<X509*>(cert)); }
int WriteKey(BIO* bio, void* key) {
  return PEM_write_bio_PrivateKey(bio, static_cast<EVP_PKEY*>(key), nullptr, nullptr, 0, nullptr,
                                  nullptr);
}

bool AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) return false;
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return true;
}

}  // namespace

absl::StatusOr<Pem> MakeCertificate(const CertSpec& spec, const Pem* issuer) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  if (!key) return absl::InternalError("EC key generation failed");
  std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), X509_free);
  X509_set_version(cert.get(), 2);
  static long serial = 1000;
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), ++serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), spec.not_before_seconds);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), spec.not_after_seconds);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1,
                             -1, 0);

  std::unique_ptr<X509, decltype(&X509_free)> issuer_cert(nullptr, X509_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> issuer_key(nullptr, EVP_PKEY_free);
  if (issuer != nullptr) {
    BIO* cbio = BIO_new_mem_buf(issuer->cert.data(), static_cast<int>(issuer->cert.size()));
    issuer_cert.reset(PEM_read_bio_X509(cbio, nullptr, nullptr, nullptr));
    BIO_free(cbio);
    BIO* kbio = BIO_new_mem_buf(issuer->key.data(), static_cast<int>(issuer->key.size()));
    issuer_key.reset(PEM_read_bio_PrivateKey(kbio, nullptr, nullptr, nullptr));
    BIO_free(kbio);
    if (!issuer_cert || !issuer_key) return absl::InvalidArgumentError("bad issuer PEM");
    X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer_cert.get()));
  } else {
    X509_set_issuer_name(cert.get(), name);
  }
  X509* signer_cert = issuer_cert ? issuer_cert.get() : cert.get();
  EVP_PKEY* signer_key = issuer_key ? issuer_key.get() : key.get();

  bool ok = true;
  if (spec.is_ca) {
    ok = ok && AddExtension(cert.get(), signer_cert, NID_basic_constraints, "critical,CA:TRUE");
    ok = ok && AddExtension(cert.get(), signer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    ok = ok && AddExtension(cert.get(), signer_cert, NID_basic_constraints, "CA:FALSE");
    ok = ok && AddExtension(cert.get(), signer_cert, NID_ext_key_usage, "serverAuth,clientAuth");
  }
  ok = ok && AddExtension(cert.get(), signer_cert, NID_subject_key_identifier, "hash");
  std::string sans;
  for (const auto& d : spec.dns) sans += (sans.empty() ? "" : ",") + std::string("DNS:") + d;
  for (const auto& i : spec.ips) sans += (sans.empty() ? "" : ",") + std::string("IP:") + i;
  for (const auto& u : spec.uris) sans += (sans.empty() ? "" : ",") + std::string("URI:") + u;
  if (!sans.empty()) ok = ok && AddExtension(cert.get(), signer_cert, NID_subject_alt_name, sans);
  if (!ok) return absl::InternalError("adding X.509 extensions failed");
  if (X509_sign(cert.get(), signer_key, EVP_sha256()) == 0) {
    return absl::InternalError("signing failed");
  }
  return Pem{ToPem(WriteCert, cert.get()), ToPem(WriteKey, key.get())};
}

void WriteFile(const std::string& path, const std::string& text) {
  // Write then rename, so a watcher never sees a half-written file.
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) std::abort();
  }
  ::chmod(temp.c_str(), 0600);
  if (std::rename(temp.c_str(), path.c_str()) != 0) std::abort();
}

std::string MakeTempDir(const std::string& prefix) {
  std::string pattern = "/tmp/" + prefix + "-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) std::abort();
  return pattern;
}

TestPki TestPki::Create(const std::string& dir, const std::string& name) {
  TestPki pki;
  pki.dir = dir;
  auto ca = MakeCertificate({.common_name = name + " test CA", .is_ca = true}, nullptr);
  if (!ca.ok()) std::abort();
  pki.ca = *ca;
  pki.ca_file = dir + "/" + name + "-ca.crt";
  WriteFile(pki.ca_file, pki.ca.cert);
  return pki;
}

std::pair<std::string, std::string> TestPki::Leaf(const std::string& name, const std::string& file,
                                                  long not_after_seconds) const {
  auto leaf = MakeCertificate({.common_name = name,
                               .dns = {"localhost"},
                               .ips = {"127.0.0.1"},
                               .uris = {"spiffe://omnirelay/" + name},
                               .not_before_seconds = not_after_seconds < 0 ? -7200 : -3600,
                               .not_after_seconds = not_after_seconds},
                              &ca);
  if (!leaf.ok()) std::abort();
  const std::string cert = dir + "/" + file + ".crt";
  const std::string key = dir + "/" + file + ".key";
  WriteFile(key, leaf->key);
  WriteFile(cert, leaf->cert);
  return {cert, key};
}

}  // namespace omnirelay::tls::testing
