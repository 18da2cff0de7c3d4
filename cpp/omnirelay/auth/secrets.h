#pragma once
// Secrets on disk: the shared HMAC key of the JWT signer/verifier.
//
// The auth service and the gateway read the same file. When it does not
// exist yet, the first process to start creates it with 32 random bytes from
// OpenSSL's CSPRNG, hex-encoded (64 characters), mode 0600, in a directory
// created with mode 0700. Creation is race-free: the secret is written to a
// private temp file and hard-linked into place, so two processes starting
// together end up reading the same complete secret.
//
// The key is the file's contents without trailing whitespace, so an operator
// may also put any passphrase of their own there (at least 32 characters are
// required for HS256 — a shorter key is refused).
#include <string>

#include "omnirelay/core/status.h"

namespace omnirelay::auth {

inline constexpr size_t kMinSecretBytes = 32;

// Reads the secret at `path`. A missing or unreadable file is an error
// (FAILED_PRECONDITION naming the path): a typo in a path must not silently
// start with a new random key.
absl::StatusOr<std::string> LoadSecret(const std::string& path);

// Reads the secret at `path`, creating it first if it does not exist. Only
// for processes explicitly told to create it (`createIfMissing`,
// `--create-secret`).
// Errors: INTERNAL on I/O, FAILED_PRECONDITION if the file's key is too short.
absl::StatusOr<std::string> LoadOrCreateSecret(const std::string& path);

// `count` random bytes from OpenSSL, hex-encoded. INTERNAL if the CSPRNG fails.
absl::StatusOr<std::string> RandomHex(size_t count);

// Creates `dir` and its missing parents with mode 0700 (existing ones are left
// as they are).
absl::Status MakeDirectories(const std::string& dir);

}  // namespace omnirelay::auth
