// `omnirelay auth`: the auth sample service of the session-affinity gateway.
//
//   omnirelay auth --listen 127.0.0.1:0 --db state/users.db
//       --jwt-secret-file state/jwt-secret --token-ttl 1h --ready-file auth.json
//
// Serves Login (my_service.MyServiceAPI) over gRPC. On first start it creates
// the user store (seeded with testuser/testpass, role "user") and the JWT
// secret (32 random bytes, hex, mode 0600); later starts reuse both. The
// gateway reads the same secret file. SIGTERM/SIGINT: graceful exit 0.
// TLS: --tls-cert-file/--tls-key-file serve gRPC over TLS (--tls-client-cert
// require + --tls-ca-file = mTLS).
#include <unistd.h>

#include <iostream>

#include "omnirelay/auth/jwt.h"
#include "omnirelay/auth/secrets.h"
#include "omnirelay/auth/user_store.h"
#include "omnirelay/cli/commands.h"
#include "omnirelay/cli/process_flags.h"
#include "omnirelay/cli/tls_flags.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/process.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/xdg.h"
#include "omnirelay/samples/auth_service.h"
#include "omnirelay/samples/process.h"

namespace omnirelay::cli {
namespace {

struct AuthOptions : ProcessFlags {
  std::string listen = "127.0.0.1:0";
  // XDG data directory by default (core/xdg.h), not a dot-folder in the cwd.
  std::string db = core::XdgPath(core::XdgKind::kData, "auth/users.db");
  std::string jwt_secret_file = core::XdgPath(core::XdgKind::kData, "auth/jwt-secret");
  std::string token_ttl = "1h";
  std::string seed_username = "testuser";
  std::string seed_password = "testpass";
  std::string seed_role = "user";
  bool create_secret = false;
  TlsFlags tls;
};

int Fail(const std::string& message, int code = 1) {
  std::cerr << "omnirelay auth: " << message << "\n";
  return code;
}

int RunAuth(const AuthOptions& options) {
  if (std::string error = ApplyLogFlags(options); !error.empty()) return Fail(error, 2);
  auto ttl = core::ParseDuration(options.token_ttl);
  if (!ttl || *ttl <= core::Duration::zero()) {
    return Fail("--token-ttl: '" + options.token_ttl + "' is not a positive duration", 2);
  }
  auto tls_options = TlsOptionsFromFlags(options.tls, /*listener=*/true);
  if (!tls_options.ok()) return Fail(std::string(tls_options.status().message()), 2);
  core::TerminationWaiter waiter;  // before any thread starts

  // Created only when asked: a mistyped path must fail, not mint a new key.
  auto secret = options.create_secret ? auth::LoadOrCreateSecret(options.jwt_secret_file)
                                      : auth::LoadSecret(options.jwt_secret_file);
  if (!secret.ok()) {
    return Fail("--jwt-secret-file: " + std::string(secret.status().message()));
  }
  auth::UserStoreOptions store_options;
  store_options.seed_username = options.seed_username;
  store_options.seed_password = options.seed_password;
  store_options.seed_role = options.seed_role;
  auto users = auth::UserStore::Open(options.db, store_options);
  if (!users.ok())
    return Fail("user store " + options.db + ": " + std::string(users.status().message()));

  samples::AuthService service(
      std::move(*users), std::make_shared<auth::JwtCodec>(std::move(*secret)), {.token_ttl = *ttl});
  std::string address;
  auto server = samples::StartGrpcServer(options.listen, {&service}, &address, *tls_options);
  if (!server.ok()) return Fail(std::string(server.status().message()));

  const nlohmann::json ready = {{"role", "auth"},     {"pid", static_cast<int>(::getpid())},
                                {"address", address}, {"grpc", address},
                                {"db", options.db},   {"jwtSecretFile", options.jwt_secret_file}};
  if (!options.ready_file.empty() && !core::WriteReadyFile(options.ready_file, ready)) {
    (*server)->Shutdown();
    return Fail("cannot write ready file " + options.ready_file);
  }
  core::LogInfo("auth.ready", ready);
  const int signal_number = waiter.Wait();
  core::LogInfo("auth.stopping", {{"signal", signal_number}});
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  core::LogInfo("auth.stopped");
  return 0;
}

}  // namespace

void AddAuthCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<AuthOptions>();
  auto* command =
      app.add_subcommand("auth", "Run the auth sample service (Login, JWT, SQLite user store)");
  command->add_option("--listen", options->listen, "gRPC host:port; port 0 = any")
      ->capture_default_str();
  command->add_option("--db", options->db, "SQLite user store (created and seeded if missing)")
      ->capture_default_str();
  command
      ->add_option("--jwt-secret-file", options->jwt_secret_file,
                   "HMAC key file shared with the gateway (must exist unless --create-secret)")
      ->capture_default_str();
  command->add_flag("--create-secret", options->create_secret,
                    "Create --jwt-secret-file (32 random bytes, mode 0600) when it is missing");
  command->add_option("--token-ttl", options->token_ttl, "Token lifetime (e.g. 30m, 1h)")
      ->capture_default_str();
  command->add_option("--seed-username", options->seed_username, "User seeded into a new store")
      ->capture_default_str();
  command->add_option("--seed-password", options->seed_password, "Password of the seeded user")
      ->envname("OMNIRELAY_SEED_PASSWORD");
  command->add_option("--seed-role", options->seed_role, "Role of the seeded user")
      ->capture_default_str();
  AddTlsFlags(command, &options->tls, /*listener=*/true);
  AddProcessFlags(command, options.get());
  command->callback([options, exit_code] { *exit_code = RunAuth(*options); });
}

}  // namespace omnirelay::cli
