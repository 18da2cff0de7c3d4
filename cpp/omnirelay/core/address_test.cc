#include "omnirelay/core/address.h"

#include <gtest/gtest.h>

namespace omnirelay::core {
namespace {

TEST(AddressTest, ParsesSchemesHostsPortsAndPaths) {
  auto plain = ParseHostPort("127.0.0.1:8080");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->host, "127.0.0.1");
  EXPECT_EQ(plain->port, 8080);
  EXPECT_EQ(plain->scheme, "");
  EXPECT_EQ(plain->path, "/");
  EXPECT_FALSE(plain->tls());

  auto https = ParseHostPort("HTTPS://svc.local:443/rpc/x");
  ASSERT_TRUE(https.ok());
  EXPECT_EQ(https->scheme, "https");
  EXPECT_TRUE(https->tls());
  EXPECT_EQ(https->path, "/rpc/x");
  EXPECT_EQ(https->Authority(), "svc.local:443");

  auto v6 = ParseHostPort("grpc://[::1]:0");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->Authority(), "[::1]:0");
  EXPECT_TRUE(ParseHostPort("dns:///localhost:50051").ok());
}

TEST(AddressTest, RejectsWhatIsNotHostPort) {
  for (const char* bad :
       {"", "localhost", ":80", "host:", "host:65536", "host:99999999999", "host:80x", "host:-1",
        "host: 80", "ftp://host:21", "::1:80", "[::1]80", "ho st:80", "host:+80"}) {
    auto parsed = ParseHostPort(bad);
    EXPECT_FALSE(parsed.ok()) << bad;
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(std::string(parsed.status().message()).find(bad), std::string::npos) << bad;
    }
  }
}

}  // namespace
}  // namespace omnirelay::core
