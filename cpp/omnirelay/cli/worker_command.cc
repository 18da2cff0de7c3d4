// `omnirelay worker`: one instance of the worker sample (the MyService role).
//
//   omnirelay worker --listen 127.0.0.1:0 --instance worker-1
//       --registry 127.0.0.1:7000 --ready-file worker-1.json
//
// Serves MyServiceEcho/Subscribe/Shutdown for one client session at a time
// (samples/worker_service.h). With --registry it registers itself once
// listening, heartbeats every --heartbeat-interval and unregisters on a clean
// exit. After answering a successful MyServiceShutdown it exits with code 0,
// like a container whose restart policy brings up a fresh instance.
// SIGTERM/SIGINT: graceful exit 0 (streams end with UNAVAILABLE).
//
// TLS: --tls-cert-file/--tls-key-file serve gRPC over TLS (--tls-client-cert
// require + --tls-ca-file = mTLS). An https:// --registry is dialled with TLS,
// verified against --tls-ca-file and presenting the same certificate (so a
// registry requiring client certificates accepts the worker without a token).
#include <unistd.h>

#include <iostream>
#include <optional>

#include "omnirelay/auth/jwt.h"
#include "omnirelay/auth/secrets.h"
#include "omnirelay/cli/commands.h"
#include "omnirelay/cli/process_flags.h"
#include "omnirelay/cli/tls_flags.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/process.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/samples/process.h"
#include "omnirelay/samples/registry_client.h"
#include "omnirelay/samples/worker_service.h"

namespace omnirelay::cli {
namespace {

struct WorkerCommandOptions : ProcessFlags {
  std::string listen = "127.0.0.1:0";
  std::string instance;
  std::string registry;
  std::string role = "worker";
  std::string advertise_address;
  std::string heartbeat_interval = "1s";
  std::string stream_interval = "5s";  // the reference's subscription period
  int stream_max_messages = 10000;
  std::string jwt_secret_file;
  std::string registry_token_file;
  std::string shutdown_grace = "2s";
  TlsFlags tls;
};

int Fail(const std::string& message, int code = 1) {
  std::cerr << "omnirelay worker: " << message << "\n";
  return code;
}

std::optional<std::chrono::milliseconds> PositiveMillis(const std::string& text) {
  auto duration = core::ParseDuration(text);
  if (!duration || *duration <= core::Duration::zero()) return std::nullopt;
  return std::chrono::duration_cast<std::chrono::milliseconds>(*duration);
}

int RunWorker(const WorkerCommandOptions& options) {
  if (std::string error = ApplyLogFlags(options); !error.empty()) return Fail(error, 2);
  const auto heartbeat = PositiveMillis(options.heartbeat_interval);
  const auto interval = PositiveMillis(options.stream_interval);
  const auto grace = PositiveMillis(options.shutdown_grace);
  if (!heartbeat) return Fail("--heartbeat-interval: not a positive duration", 2);
  if (!interval) return Fail("--stream-interval: not a positive duration", 2);
  if (!grace) return Fail("--shutdown-grace: not a positive duration", 2);
  // Only --tls-ca-file (no certificate): a plaintext listener, and an
  // https:// registry verified against that CA.
  const bool tls_listener = !options.tls.cert_file.empty();
  auto tls_options = TlsOptionsFromFlags(options.tls, tls_listener);
  if (!tls_options.ok()) return Fail(std::string(tls_options.status().message()), 2);
  const std::optional<tls::TlsOptions> listener_tls =
      tls_listener ? *tls_options : std::optional<tls::TlsOptions>();
  std::optional<samples::RegistryClient> registry;
  if (!options.registry.empty()) {
    std::optional<tls::TlsOptions> registry_tls = *tls_options;
    if (registry_tls) registry_tls->client_auth = tls::ClientAuth::kNone;  // listener-only
    auto client =
        samples::RegistryClient::Create(options.registry, std::chrono::seconds(2), registry_tls);
    if (!client.ok()) return Fail("--registry: " + std::string(client.status().message()), 2);
    registry = std::move(*client);
    if (!options.registry_token_file.empty()) {
      auto token = auth::LoadSecret(options.registry_token_file);
      if (!token.ok()) {
        return Fail("--registry-token-file: " + std::string(token.status().message()), 2);
      }
      registry->set_token(std::move(*token));
    }
  }
  core::TerminationWaiter waiter;  // before any thread starts

  samples::WorkerOptions worker;
  worker.instance = options.instance;
  worker.stream_interval = *interval;
  worker.stream_max_messages = options.stream_max_messages;
  worker.on_shutdown = [&waiter] { waiter.RequestStop(); };
  if (!options.jwt_secret_file.empty()) {
    auto secret = auth::LoadSecret(options.jwt_secret_file);  // never minted here
    if (!secret.ok()) {
      return Fail("--jwt-secret-file: " + std::string(secret.status().message()));
    }
    worker.verifier = std::make_shared<auth::JwtCodec>(std::move(*secret));
  }
  samples::WorkerService service(std::move(worker));
  std::string address;
  auto server = samples::StartGrpcServer(options.listen, {&service}, &address, listener_tls);
  if (!server.ok()) return Fail(std::string(server.status().message()));

  std::unique_ptr<samples::RegistrationLoop> registration;
  if (registry) {
    const std::string advertised =
        options.advertise_address.empty() ? address : options.advertise_address;
    registration = std::make_unique<samples::RegistrationLoop>(
        *registry, samples::Instance{options.instance, advertised, options.role}, *heartbeat);
    (void)registration->Start();  // logged; the loop keeps trying
  }
  const nlohmann::json ready = {{"role", options.role},
                                {"instance", options.instance},
                                {"pid", static_cast<int>(::getpid())},
                                {"address", address},
                                {"grpc", address}};
  if (!options.ready_file.empty() && !core::WriteReadyFile(options.ready_file, ready)) {
    if (registration) registration->Stop();
    (*server)->Shutdown();
    return Fail("cannot write ready file " + options.ready_file);
  }
  core::LogInfo("worker.ready", ready);

  const int signal_number = waiter.Wait();
  core::LogInfo("worker.stopping", {{"instance", options.instance},
                                    {"reason", signal_number == 0 ? "shutdown" : "signal"},
                                    {"signal", signal_number}});
  // Leave the registry first so the gateway stops choosing this instance,
  // then end streams and let in-flight replies (the Shutdown answer) go out.
  if (registration) registration->Stop(/*unregister=*/true);
  service.Stop();
  (*server)->Shutdown(std::chrono::system_clock::now() + *grace);
  core::LogInfo("worker.stopped", {{"instance", options.instance}});
  return 0;
}

}  // namespace

void AddWorkerCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<WorkerCommandOptions>();
  auto* command = app.add_subcommand(
      "worker", "Run one worker instance (MyService role: one client session at a time)");
  command->add_option("--listen", options->listen, "gRPC host:port; port 0 = any")
      ->capture_default_str();
  command->add_option("--instance", options->instance, "Instance id, returned as pod_name")
      ->required();
  command->add_option("--registry", options->registry,
                      "Instance registry [http://|https://]host:port to register with (optional)");
  command->add_option("--role", options->role, "Role announced to the registry")
      ->capture_default_str();
  command->add_option("--advertise-address", options->advertise_address,
                      "Address announced to the registry (default: the bound address)");
  command
      ->add_option("--heartbeat-interval", options->heartbeat_interval, "Registry heartbeat period")
      ->capture_default_str();
  command
      ->add_option("--stream-interval", options->stream_interval,
                   "Period between MyServiceSubscribe messages")
      ->capture_default_str();
  command
      ->add_option("--stream-max-messages", options->stream_max_messages,
                   "Messages after which a subscription ends OK (0 = until cancelled)")
      ->capture_default_str();
  command->add_option("--registry-token-file", options->registry_token_file,
                      "Bearer token the registry requires for registrations");
  command->add_option("--jwt-secret-file", options->jwt_secret_file,
                      "Also verify tokens here (default: the gateway does it)");
  command
      ->add_option("--shutdown-grace", options->shutdown_grace,
                   "How long in-flight calls may finish on exit")
      ->capture_default_str();
  AddTlsFlags(command, &options->tls, /*listener=*/true);
  AddProcessFlags(command, options.get());
  command->callback([options, exit_code] { *exit_code = RunWorker(*options); });
}

}  // namespace omnirelay::cli
