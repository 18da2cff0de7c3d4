#pragma once
// The user store behind Login: a SQLite table of salted password hashes.
//
//   CREATE TABLE users(username TEXT PRIMARY KEY, salt TEXT NOT NULL,
//                      password_hash TEXT NOT NULL, role TEXT NOT NULL)
//
// `salt` is 16 random bytes (hex) per user; `password_hash` is
// "pbkdf2-sha256$<iterations>$<hex of 32 bytes>", PBKDF2-HMAC-SHA256 over the
// password with that salt. Storing the iteration count with the hash (as
// Django and passlib do) lets the work factor grow later without
// invalidating existing rows.
//
// On open the table is created if missing and, when it holds no user at all,
// the seed user is inserted — by default "testuser" / "testpass" with role
// "user" (docs/session-gateway.md). A store that already has users is never
// re-seeded, so an operator who deleted or changed the test user keeps that.
//
// Thread-safety: all methods are thread-safe (one mutex around the
// connection). Several processes may share the file (SQLite locking).
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "omnirelay/auth/sqlite.h"
#include "omnirelay/core/status.h"

namespace omnirelay::auth {

struct UserStoreOptions {
  std::string seed_username = "testuser";
  std::string seed_password = "testpass";
  std::string seed_role = "user";
  bool seed = true;
  // PBKDF2 work factor for new hashes. 100k iterations cost ~30-60 ms of one
  // core here: slow for an offline guesser, still cheap per Login on 2 cores.
  int iterations = 100000;
};

class UserStore {
 public:
  // Opens or creates the store at `path` (":memory:" for tests); creates the
  // parent directory (mode 0700) if needed. Errors: INTERNAL on I/O/SQL.
  static absl::StatusOr<std::unique_ptr<UserStore>> Open(const std::string& path,
                                                         UserStoreOptions options = {});

  // Inserts or replaces a user with a fresh random salt.
  absl::Status PutUser(std::string_view username, std::string_view password, std::string_view role);

  // Returns the user's role when the password matches; PERMISSION_DENIED
  // "invalid username or password" for an unknown user or a wrong password
  // (one message for both so a caller cannot probe for user names; an
  // unknown user also pays one PBKDF2 so timing does not tell either).
  absl::StatusOr<std::string> Authenticate(std::string_view username, std::string_view password);

  // The stored salt (hex) of `username`; NOT_FOUND if absent. For tests/tools.
  absl::StatusOr<std::string> SaltOf(std::string_view username);
  absl::StatusOr<int64_t> UserCount();

 private:
  UserStore(std::unique_ptr<Database> db, UserStoreOptions options)
      : db_(std::move(db)), options_(std::move(options)) {}
  absl::Status Init();

  std::mutex mu_;
  std::unique_ptr<Database> db_;
  UserStoreOptions options_;
};

// PBKDF2-HMAC-SHA256 in the stored format above; exposed for tests.
absl::StatusOr<std::string> HashPassword(std::string_view password, std::string_view salt_hex,
                                         int iterations);
// Constant-time check of `password` against a stored "pbkdf2-sha256$..." hash.
bool VerifyPassword(std::string_view password, std::string_view salt_hex,
                    std::string_view stored_hash);

}  // namespace omnirelay::auth
