#include "omnirelay/auth/secrets.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace omnirelay::auth {
namespace {

absl::Status ErrnoError(const std::string& what) {
  return absl::InternalError(what + ": " + std::strerror(errno));
}

absl::StatusOr<std::string> ReadSecret(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InternalError("cannot read secret file " + path);
  std::stringstream contents;
  contents << in.rdbuf();
  std::string key = contents.str();
  while (!key.empty() &&
         (key.back() == '\n' || key.back() == '\r' || key.back() == ' ' || key.back() == '\t')) {
    key.pop_back();
  }
  if (key.size() < kMinSecretBytes) {
    return absl::FailedPreconditionError("secret file " + path + " holds fewer than " +
                                         std::to_string(kMinSecretBytes) + " bytes");
  }
  return key;
}

}  // namespace

absl::StatusOr<std::string> RandomHex(size_t count) {
  std::vector<unsigned char> bytes(count);
  if (RAND_bytes(bytes.data(), static_cast<int>(count)) != 1) {
    return absl::InternalError("RAND_bytes failed");
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(count * 2);
  for (unsigned char byte : bytes) {
    hex.push_back(kDigits[byte >> 4]);
    hex.push_back(kDigits[byte & 0xf]);
  }
  return hex;
}

absl::Status MakeDirectories(const std::string& dir) {
  if (dir.empty()) return absl::OkStatus();
  std::filesystem::path path(dir);
  std::filesystem::path current;
  for (const auto& part : path) {
    current /= part;
    if (::mkdir(current.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoError("mkdir " + current.string());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> LoadSecret(const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError("cannot read secret file " + path + ": " +
                                         std::strerror(errno) +
                                         " (create it, or ask for createIfMissing)");
  }
  return ReadSecret(path);
}

absl::StatusOr<std::string> LoadOrCreateSecret(const std::string& path) {
  if (::access(path.c_str(), F_OK) == 0) return ReadSecret(path);

  const std::string parent = std::filesystem::path(path).parent_path().string();
  if (auto status = MakeDirectories(parent); !status.ok()) return status;
  auto secret = RandomHex(kMinSecretBytes);
  if (!secret.ok()) return secret.status();

  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("create " + temp);
  const std::string contents = *secret + "\n";
  const bool written =
      ::write(fd, contents.data(), contents.size()) == static_cast<ssize_t>(contents.size()) &&
      ::fsync(fd) == 0;
  ::close(fd);
  if (!written) {
    ::unlink(temp.c_str());
    return ErrnoError("write " + temp);
  }
  // link() fails with EEXIST if another process won the race; then we both
  // read the winner's file, which is complete because it was linked whole.
  const int linked = ::link(temp.c_str(), path.c_str());
  const int link_errno = errno;
  ::unlink(temp.c_str());
  if (linked != 0 && link_errno != EEXIST) {
    errno = link_errno;
    return ErrnoError("link " + path);
  }
  return ReadSecret(path);
}

}  // namespace omnirelay::auth
