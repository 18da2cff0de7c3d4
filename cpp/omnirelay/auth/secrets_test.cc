#include "omnirelay/auth/secrets.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

namespace omnirelay::auth {
namespace {

std::filesystem::path TempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("omnirelay_secrets_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(SecretsTest, CreatesPrivateRandomSecretOnceAndRereadsIt) {
  const auto dir = TempDir("create");
  const auto path = (dir / "nested" / "jwt-secret").string();
  auto first = LoadOrCreateSecret(path);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->size(), 64u);  // 32 bytes, hex
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((dir / "nested").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0700u);

  auto second = LoadOrCreateSecret(path);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*first, *second);

  const auto other = (dir / "other-secret").string();
  auto third = LoadOrCreateSecret(other);
  ASSERT_TRUE(third.ok());
  EXPECT_NE(*first, *third);
  std::filesystem::remove_all(dir);
}

TEST(SecretsTest, UsesOperatorProvidedSecretAndRefusesShortOnes) {
  const auto dir = TempDir("given");
  std::filesystem::create_directories(dir);
  const auto path = (dir / "secret").string();
  std::ofstream(path) << "a passphrase of more than thirty-two chars\n";
  auto secret = LoadOrCreateSecret(path);
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(*secret, "a passphrase of more than thirty-two chars");

  std::ofstream(path, std::ios::trunc) << "short\n";
  auto refused = LoadOrCreateSecret(path);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace omnirelay::auth
