// `omnirelay registry`: the instance registry of the session-affinity gateway.
//
//   omnirelay registry --listen 127.0.0.1:0 --ttl 5s --ready-file registry.json
//       --token-file state/registry-token --create-token
//       [--tls-cert-file c --tls-key-file k --tls-ca-file ca --tls-client-cert require]
//
// Registrations are authenticated: by the bearer token of --token-file, or by
// a client certificate from --tls-ca-file (mTLS). With neither the registry
// refuses to start, unless --insecure-allow-unauthenticated says so (local
// demos only). With --tls-* it serves HTTPS (clients use https:// URLs).
//
// HTTP: POST /register, POST /unregister, GET /instances?role=worker
// (samples/registry.h). State is in memory: after a restart the workers'
// next heartbeats (one per second) repopulate it. SIGTERM: graceful exit 0.
#include <unistd.h>

#include <iostream>

#include "omnirelay/auth/secrets.h"
#include "omnirelay/cli/commands.h"
#include "omnirelay/cli/process_flags.h"
#include "omnirelay/cli/tls_flags.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/process.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/samples/process.h"
#include "omnirelay/samples/registry.h"
#include "omnirelay/samples/registry_client.h"

namespace omnirelay::cli {
namespace {

struct RegistryCommandOptions : ProcessFlags {
  std::string listen = "127.0.0.1:0";
  std::string ttl = "5s";
  std::string token_file;
  bool create_token = false;
  bool allow_unauthenticated = false;
  TlsFlags tls;
};

int Fail(const std::string& message, int code = 1) {
  std::cerr << "omnirelay registry: " << message << "\n";
  return code;
}

int RunRegistry(const RegistryCommandOptions& options) {
  if (std::string error = ApplyLogFlags(options); !error.empty()) return Fail(error, 2);
  auto ttl = core::ParseDuration(options.ttl);
  if (!ttl || *ttl <= core::Duration::zero()) {
    return Fail("--ttl: '" + options.ttl + "' is not a positive duration", 2);
  }
  auto listen = samples::SplitHostPort(options.listen);
  if (!listen.ok()) return Fail("--listen: " + std::string(listen.status().message()), 2);
  std::string token;
  if (!options.token_file.empty()) {
    auto loaded = options.create_token ? auth::LoadOrCreateSecret(options.token_file)
                                       : auth::LoadSecret(options.token_file);
    if (!loaded.ok()) return Fail("--token-file: " + std::string(loaded.status().message()), 2);
    token = std::move(*loaded);
  }
  auto tls_options = TlsOptionsFromFlags(options.tls, /*listener=*/true);
  if (!tls_options.ok()) return Fail(std::string(tls_options.status().message()), 2);
  std::shared_ptr<tls::ContextSource> tls_source;
  if (*tls_options) {
    auto source = tls::ContextSource::Create(**tls_options, tls::Role::kServer);
    if (!source.ok()) return Fail(std::string(source.status().message()), 2);
    tls_source = std::move(*source);
  }
  core::TerminationWaiter waiter;  // before any thread starts

  samples::RegistryServer server(
      {.host = listen->first, .port = listen->second, .threads = 2, .tls = tls_source},
      {.ttl = *ttl,
       .token = std::move(token),
       .allow_unauthenticated = options.allow_unauthenticated});
  if (auto status = server.Start(); !status.ok()) {
    // No authentication configured is a usage error (exit 2), like a bad flag.
    return Fail(std::string(status.message()),
                status.code() == absl::StatusCode::kFailedPrecondition ? 2 : 1);
  }
  const nlohmann::json ready = {{"role", "registry"},
                                {"pid", static_cast<int>(::getpid())},
                                {"address", server.address()},
                                {"http", server.address()},
                                {"url", (tls_source ? "https://" : "http://") + server.address()}};
  if (!options.ready_file.empty() && !core::WriteReadyFile(options.ready_file, ready)) {
    server.Stop();
    return Fail("cannot write ready file " + options.ready_file);
  }
  core::LogInfo("registry.ready", ready);
  const int signal_number = waiter.Wait();
  core::LogInfo("registry.stopping", {{"signal", signal_number}});
  server.Stop();
  core::LogInfo("registry.stopped");
  return 0;
}

}  // namespace

void AddRegistryCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<RegistryCommandOptions>();
  auto* command = app.add_subcommand("registry", "Run the instance registry (HTTP)");
  command->add_option("--listen", options->listen, "HTTP host:port; port 0 = any")
      ->capture_default_str();
  command->add_option("--ttl", options->ttl, "Entry lifetime without a heartbeat")
      ->capture_default_str();
  command->add_option("--token-file", options->token_file,
                      "Registrations need this bearer token (file of at least 32 characters)");
  command->add_flag("--create-token", options->create_token,
                    "Create --token-file (32 random bytes, hex, mode 0600) when it is missing");
  command->add_flag("--insecure-allow-unauthenticated", options->allow_unauthenticated,
                    "Let anyone who reaches the port register instances (local demos only)");
  AddTlsFlags(command, &options->tls, /*listener=*/true);
  AddProcessFlags(command, options.get());
  command->callback([options, exit_code] { *exit_code = RunRegistry(*options); });
}

}  // namespace omnirelay::cli
