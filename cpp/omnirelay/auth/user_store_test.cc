#include "omnirelay/auth/user_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

namespace omnirelay::auth {
namespace {

// Few iterations keep the tests fast; the scheme is the same.
UserStoreOptions FastOptions() {
  UserStoreOptions options;
  options.iterations = 1000;
  return options;
}

TEST(UserStoreTest, SeedsTestUserOnFirstOpen) {
  auto store = UserStore::Open(":memory:", FastOptions());
  ASSERT_TRUE(store.ok()) << store.status();
  auto role = (*store)->Authenticate("testuser", "testpass");
  ASSERT_TRUE(role.ok()) << role.status();
  EXPECT_EQ(*role, "user");
  EXPECT_EQ(*(*store)->UserCount(), 1);
}

TEST(UserStoreTest, WrongPasswordAndUnknownUserAreOneError) {
  auto store = UserStore::Open(":memory:", FastOptions());
  ASSERT_TRUE(store.ok());
  for (auto [user, password] : {std::pair{"testuser", "wrong"}, std::pair{"nobody", "testpass"},
                                std::pair{"testuser", ""}, std::pair{"testuser", "testpass "}}) {
    auto result = (*store)->Authenticate(user, password);
    ASSERT_FALSE(result.ok()) << user << "/" << password;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(std::string(result.status().message()), "invalid username or password");
  }
}

TEST(UserStoreTest, SaltDiffersPerUserAndHashesDiffer) {
  auto store = UserStore::Open(":memory:", FastOptions());
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->PutUser("alice", "same-password", "admin").ok());
  ASSERT_TRUE((*store)->PutUser("bob", "same-password", "user").ok());
  auto alice = (*store)->SaltOf("alice");
  auto bob = (*store)->SaltOf("bob");
  ASSERT_TRUE(alice.ok() && bob.ok());
  EXPECT_EQ(alice->size(), 32u);
  EXPECT_NE(*alice, *bob);
  EXPECT_NE(*HashPassword("same-password", *alice, 1000),
            *HashPassword("same-password", *bob, 1000));
  EXPECT_EQ(*(*store)->Authenticate("alice", "same-password"), "admin");
  EXPECT_EQ(*(*store)->Authenticate("bob", "same-password"), "user");
}

TEST(UserStoreTest, HashFormatCarriesIterations) {
  auto hash = HashPassword("pw", "abcd", 1234);
  ASSERT_TRUE(hash.ok());
  EXPECT_EQ(hash->rfind("pbkdf2-sha256$1234$", 0), 0u);
  EXPECT_EQ(hash->size(), std::string("pbkdf2-sha256$1234$").size() + 64);
  EXPECT_TRUE(VerifyPassword("pw", "abcd", *hash));
  EXPECT_FALSE(VerifyPassword("pw", "abce", *hash));
  EXPECT_FALSE(VerifyPassword("pw", "abcd", "plain-text"));
}

TEST(UserStoreTest, PersistsAndDoesNotReseed) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("omnirelay_users_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto path = (dir / "sub" / "users.db").string();
  {
    auto store = UserStore::Open(path, FastOptions());
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->PutUser("testuser", "changed", "user").ok());
  }
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);  // password hashes stay private
  auto reopened = UserStore::Open(path, FastOptions());
  ASSERT_TRUE(reopened.ok());
  EXPECT_FALSE((*reopened)->Authenticate("testuser", "testpass").ok());
  EXPECT_TRUE((*reopened)->Authenticate("testuser", "changed").ok());
  EXPECT_EQ(*(*reopened)->UserCount(), 1);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace omnirelay::auth
