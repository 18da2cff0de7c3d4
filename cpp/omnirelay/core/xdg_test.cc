#include "omnirelay/core/xdg.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>

namespace omnirelay::core {
namespace {

// Restores an environment variable when the test ends.
class EnvGuard {
 public:
  explicit EnvGuard(const char* name) : name_(name) {
    if (const char* v = std::getenv(name)) saved_ = v;
  }
  ~EnvGuard() {
    if (saved_) {
      ::setenv(name_, saved_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

TEST(XdgTest, FollowsXdgVariablesThenHome) {
  EnvGuard home("HOME"), data("XDG_DATA_HOME"), state("XDG_STATE_HOME");
  ::setenv("HOME", "/home/u", 1);
  ::unsetenv("XDG_DATA_HOME");
  ::unsetenv("XDG_STATE_HOME");
  EXPECT_EQ(XdgPath(XdgKind::kData, "auth/users.db"),
            "/home/u/.local/share/omnirelay/auth/users.db");
  EXPECT_EQ(XdgPath(XdgKind::kState), "/home/u/.local/state/omnirelay");
  ::setenv("XDG_DATA_HOME", "/srv/data", 1);
  EXPECT_EQ(XdgPath(XdgKind::kData, "auth/jwt-secret"), "/srv/data/omnirelay/auth/jwt-secret");
  ::setenv("XDG_STATE_HOME", "relative/ignored", 1);  // relative values are ignored
  EXPECT_EQ(XdgPath(XdgKind::kState), "/home/u/.local/state/omnirelay");
}

}  // namespace
}  // namespace omnirelay::core
