// The security keys of the node config: TLS files and modes, the admin
// control plane, trusted proxies, and https:// that is TLS or an error.
#include <gtest/gtest.h>

#include "omnirelay/config/config.h"

namespace omnirelay::config {
namespace {

std::string ErrorOf(const nlohmann::json& section) {
  auto config = Parse({{"omniRelay", section}});
  return config.ok() ? "" : std::string(config.status().message());
}

TEST(ConfigSecurityTest, TlsSectionParsesWithDefaults) {
  auto config = Parse({{"omniRelay",
                        {{"tls",
                          {{"certFile", "/n.crt"},
                           {"keyFile", "/n.key"},
                           {"caFile", "/ca.crt"},
                           {"clientCertificate", "Require"},
                           {"reloadInterval", "250ms"}}}}}});
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->tls.has_value());
  EXPECT_EQ(config->tls->client_certificate, "require");
  EXPECT_EQ(config->tls->reload_interval, std::chrono::milliseconds(250));
  EXPECT_EQ(ToJson(*config)["omniRelay"]["tls"]["caFile"], "/ca.crt");
  EXPECT_EQ(config->admin.address, "127.0.0.1:9901");  // loopback by default
  EXPECT_EQ(config->admin.read_access, "open");
}

TEST(ConfigSecurityTest, TlsErrorsNameTheKey) {
  const std::string errors =
      ErrorOf({{"tls", {{"certFile", "/n.crt"}, {"clientCertificate", "always"}}}});
  EXPECT_NE(errors.find("omniRelay.tls.keyFile: is required"), std::string::npos) << errors;
  EXPECT_NE(errors.find("omniRelay.tls.clientCertificate: unknown mode 'always'"),
            std::string::npos)
      << errors;
  const std::string no_ca =
      ErrorOf({{"tls", {{"certFile", "/c"}, {"keyFile", "/k"}, {"clientCertificate", "require"}}}});
  EXPECT_NE(no_ca.find("omniRelay.tls.caFile: is required when clientCertificate is 'require'"),
            std::string::npos)
      << no_ca;
}

TEST(ConfigSecurityTest, HttpsIsTlsOrAnError) {
  const std::string inbound =
      ErrorOf({{"inbounds", {{"grpc", {{"urls", {"https://127.0.0.1:0"}}}}}}});
  EXPECT_NE(inbound.find("omniRelay.inbounds.grpc.urls: https:// needs omniRelay.tls"),
            std::string::npos)
      << inbound;
  const nlohmann::json gateway = {
      {"address", "127.0.0.1:0"},
      {"clusters",
       {{"mixed", {{"endpoints", {"https://10.0.0.1:443", "10.0.0.2:80"}}}},
        {"reg", {{"registry", "https://127.0.0.1:7000"}}}}},
      {"routes", {{{"prefix", "/x/"}, {"cluster", "mixed"}}}}};
  const std::string errors = ErrorOf({{"gateway", gateway}});
  EXPECT_NE(errors.find("omniRelay.gateway.clusters.mixed.endpoints: mixes https://"),
            std::string::npos)
      << errors;
  // An https:// registry is polled over TLS (never plaintext), so it is valid.
  EXPECT_EQ(errors.find("omniRelay.gateway.clusters.reg.registry"), std::string::npos) << errors;

  auto secure = Parse({{"omniRelay",
                        {{"gateway",
                          {{"address", "127.0.0.1:0"},
                           {"clusters", {{"c", {{"endpoints", {"https://10.0.0.1:443"}}}}}},
                           {"routes", {{{"prefix", "/x/"}, {"cluster", "c"}}}}}}}}});
  ASSERT_TRUE(secure.ok()) << secure.status();
  EXPECT_TRUE(secure->gateway->clusters.at("c").tls);
  auto registry = Parse({{"omniRelay",
                          {{"gateway",
                            {{"address", "127.0.0.1:0"},
                             {"clusters", {{"c", {{"registry", "https://127.0.0.1:7000"}}}}},
                             {"routes", {{{"prefix", "/x/"}, {"cluster", "c"}}}}}}}}});
  ASSERT_TRUE(registry.ok()) << registry.status();
  EXPECT_TRUE(registry->gateway->clusters.at("c").registry_tls);
  EXPECT_EQ(registry->gateway->clusters.at("c").registry, "127.0.0.1:7000");
  EXPECT_EQ(secure->gateway->clusters.at("c").endpoints.at(0), "10.0.0.1:443");
}

TEST(ConfigSecurityTest, AdminAndPrincipalKeys) {
  const std::string errors = ErrorOf({{"admin", {{"readAccess", "token"}}}});
  EXPECT_NE(errors.find("omniRelay.admin.readAccess: 'token' needs omniRelay.admin.tokenFile"),
            std::string::npos)
      << errors;
  auto config =
      Parse({{"omniRelay",
              {{"admin", {{"tokenFile", "/t"}, {"readAccess", "token"}}},
               {"principal", {{"trustedProxies", {"10.0.0.0/8"}}, {"jwtSecretFile", "/s"}}},
               {"gateway",
                {{"address", "127.0.0.1:0"},
                 {"jwt", {{"secretFile", "/s"}, {"createIfMissing", true}}},
                 {"clusters", {{"c", {{"endpoints", {"127.0.0.1:1"}}}}}},
                 {"routes", {{{"prefix", "/x/"}, {"cluster", "c"}}}}}}}}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->admin.token_file, "/t");
  EXPECT_EQ(config->principal.trusted_proxies, std::vector<std::string>{"10.0.0.0/8"});
  EXPECT_TRUE(config->gateway->jwt_create_if_missing);
  EXPECT_FALSE(config->gateway->clusters.at("c").tls);
}

}  // namespace
}  // namespace omnirelay::config
