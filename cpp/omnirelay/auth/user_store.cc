#include "omnirelay/auth/user_store.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <filesystem>
#include <vector>

#include "omnirelay/auth/secrets.h"

namespace omnirelay::auth {
namespace {

constexpr char kHashScheme[] = "pbkdf2-sha256";
constexpr size_t kSaltBytes = 16;
constexpr size_t kHashBytes = 32;
// Salt of the dummy hash an unknown user is checked against (timing only).
constexpr char kDummySalt[] = "00000000000000000000000000000000";

std::string ToHex(const unsigned char* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    hex.push_back(kDigits[data[i] >> 4]);
    hex.push_back(kDigits[data[i] & 0xf]);
  }
  return hex;
}

}  // namespace

absl::StatusOr<std::string> HashPassword(std::string_view password, std::string_view salt_hex,
                                         int iterations) {
  if (iterations < 1) return absl::InvalidArgumentError("iterations must be positive");
  unsigned char out[kHashBytes];
  // The salt is used as its hex text: the stored string is what gets hashed,
  // which keeps the scheme independent of any hex decoding subtleties.
  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                        reinterpret_cast<const unsigned char*>(salt_hex.data()),
                        static_cast<int>(salt_hex.size()), iterations, EVP_sha256(), kHashBytes,
                        out) != 1) {
    return absl::InternalError("PKCS5_PBKDF2_HMAC failed");
  }
  return std::string(kHashScheme) + "$" + std::to_string(iterations) + "$" + ToHex(out, kHashBytes);
}

bool VerifyPassword(std::string_view password, std::string_view salt_hex,
                    std::string_view stored_hash) {
  const std::string prefix = std::string(kHashScheme) + "$";
  if (stored_hash.substr(0, prefix.size()) != prefix) return false;
  const auto rest = stored_hash.substr(prefix.size());
  const auto dollar = rest.find('$');
  if (dollar == std::string_view::npos || dollar == 0 || dollar > 9) return false;
  int iterations = 0;
  for (char c : rest.substr(0, dollar)) {
    if (c < '0' || c > '9') return false;
    iterations = iterations * 10 + (c - '0');
  }
  auto computed = HashPassword(password, salt_hex, iterations);
  if (!computed.ok() || computed->size() != stored_hash.size()) return false;
  return CRYPTO_memcmp(computed->data(), stored_hash.data(), stored_hash.size()) == 0;
}

absl::StatusOr<std::unique_ptr<UserStore>> UserStore::Open(const std::string& path,
                                                           UserStoreOptions options) {
  if (path != ":memory:") {
    const std::string parent = std::filesystem::path(path).parent_path().string();
    if (auto status = MakeDirectories(parent); !status.ok()) return status;
    // The file holds password hashes: create it private (SQLite would use the
    // umask, typically 0644; its journal files copy the database's mode).
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) ::close(fd);
  }
  auto db = Database::Open(path);
  if (!db.ok()) return db.status();
  std::unique_ptr<UserStore> store(new UserStore(std::move(*db), std::move(options)));
  if (auto status = store->Init(); !status.ok()) return status;
  return store;
}

absl::Status UserStore::Init() {
  std::lock_guard<std::mutex> lock(mu_);
  // IMMEDIATE takes the write lock up front, so two processes opening a new
  // store together cannot both see it empty and both seed it.
  if (auto status = db_->Exec(
          "BEGIN IMMEDIATE;"
          "CREATE TABLE IF NOT EXISTS users(username TEXT PRIMARY KEY, salt TEXT NOT NULL,"
          " password_hash TEXT NOT NULL, role TEXT NOT NULL);");
      !status.ok()) {
    return status;
  }
  auto count = db_->Prepare("SELECT COUNT(*) FROM users");
  if (!count.ok()) return count.status();
  auto row = count->Step();
  if (!row.ok() || !*row) {
    (void)db_->Exec("ROLLBACK");
    return row.ok() ? absl::InternalError("COUNT(*) returned no row") : row.status();
  }
  if (count->ColumnInt(0) == 0 && options_.seed) {
    auto salt = RandomHex(kSaltBytes);
    auto hash = salt.ok() ? HashPassword(options_.seed_password, *salt, options_.iterations)
                          : absl::StatusOr<std::string>(salt.status());
    if (!hash.ok()) {
      (void)db_->Exec("ROLLBACK");
      return hash.status();
    }
    auto insert = db_->Prepare(
        "INSERT INTO users(username, salt, password_hash, role)"
        " VALUES(?1, ?2, ?3, ?4)");
    absl::Status status = insert.ok() ? absl::OkStatus() : insert.status();
    if (status.ok()) status = insert->BindText(1, options_.seed_username);
    if (status.ok()) status = insert->BindText(2, *salt);
    if (status.ok()) status = insert->BindText(3, *hash);
    if (status.ok()) status = insert->BindText(4, options_.seed_role);
    if (status.ok()) status = insert->Run();
    if (!status.ok()) {
      (void)db_->Exec("ROLLBACK");
      return status;
    }
  }
  return db_->Exec("COMMIT");
}

absl::Status UserStore::PutUser(std::string_view username, std::string_view password,
                                std::string_view role) {
  if (username.empty()) return absl::InvalidArgumentError("username is required");
  auto salt = RandomHex(kSaltBytes);
  if (!salt.ok()) return salt.status();
  auto hash = HashPassword(password, *salt, options_.iterations);
  if (!hash.ok()) return hash.status();
  std::lock_guard<std::mutex> lock(mu_);
  auto insert = db_->Prepare(
      "INSERT OR REPLACE INTO users(username, salt, password_hash, role) VALUES(?1, ?2, ?3, ?4)");
  if (!insert.ok()) return insert.status();
  if (auto s = insert->BindText(1, username); !s.ok()) return s;
  if (auto s = insert->BindText(2, *salt); !s.ok()) return s;
  if (auto s = insert->BindText(3, *hash); !s.ok()) return s;
  if (auto s = insert->BindText(4, role); !s.ok()) return s;
  return insert->Run();
}

absl::StatusOr<std::string> UserStore::Authenticate(std::string_view username,
                                                    std::string_view password) {
  std::string salt, stored_hash, role;
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto select = db_->Prepare("SELECT salt, password_hash, role FROM users WHERE username = ?1");
    if (!select.ok()) return select.status();
    if (auto s = select->BindText(1, username); !s.ok()) return s;
    auto row = select->Step();
    if (!row.ok()) return row.status();
    if (*row) {
      found = true;
      salt = select->ColumnText(0);
      stored_hash = select->ColumnText(1);
      role = select->ColumnText(2);
    }
  }
  // The PBKDF2 runs outside the lock: it is the slow part and needs no DB.
  if (!found) {
    (void)HashPassword(password, kDummySalt, options_.iterations);
    return absl::PermissionDeniedError("invalid username or password");
  }
  if (!VerifyPassword(password, salt, stored_hash)) {
    return absl::PermissionDeniedError("invalid username or password");
  }
  return role;
}

absl::StatusOr<std::string> UserStore::SaltOf(std::string_view username) {
  std::lock_guard<std::mutex> lock(mu_);
  auto select = db_->Prepare("SELECT salt FROM users WHERE username = ?1");
  if (!select.ok()) return select.status();
  if (auto s = select->BindText(1, username); !s.ok()) return s;
  auto row = select->Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError("no such user");
  return select->ColumnText(0);
}

absl::StatusOr<int64_t> UserStore::UserCount() {
  std::lock_guard<std::mutex> lock(mu_);
  auto select = db_->Prepare("SELECT COUNT(*) FROM users");
  if (!select.ok()) return select.status();
  auto row = select->Step();
  if (!row.ok()) return row.status();
  return select->ColumnInt(0);
}

}  // namespace omnirelay::auth
