// `omnirelay serve`: runs one node from a configuration until SIGTERM/SIGINT.
//
//   omnirelay serve --config gateway.yaml --set outbounds.analytics.peerChooser=round-robin
//
// Configuration precedence: file, then OMNIRELAY__* environment, then --set,
// then the dedicated flags (--name, --admin-address, --grpc-address,
// --http-address). Readiness is announced twice: /readyz turns 200 and, with
// --ready-file, a JSON file with the bound addresses appears (written to a
// temp name and renamed, so a reader never sees half a file).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "omnirelay/cli/commands.h"
#include "omnirelay/cli/run_node.h"
#include "omnirelay/core/address.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/process.h"
#include "omnirelay/node/node.h"

namespace omnirelay::cli {
namespace {

struct ServeOptions {
  std::string config_file;
  std::vector<std::string> sets;
  std::string name;
  std::string admin_address;
  std::string grpc_address;
  std::string http_address;
  RunNodeOptions run;
};

int RunServe(const ServeOptions& options) {
  std::vector<std::string> sets = options.sets;
  // Flags override the file: express them as --set entries so validation
  // reports them with the same key paths.
  for (const auto& [flag, value, key] :
       {std::tuple{"--admin-address", options.admin_address, "admin.address"},
        std::tuple{"--grpc-address", options.grpc_address, "inbounds.grpc.address"},
        std::tuple{"--http-address", options.http_address, "inbounds.http.address"}}) {
    if (value.empty()) continue;
    if (!core::IsHostPort(value)) {
      std::cerr << "omnirelay " << options.run.command << ": " << flag << ": address '" << value
                << "' is not host:port\n";
      return 2;
    }
    sets.push_back(std::string(key) + "=\"" + value + "\"");
  }
  if (!options.name.empty()) sets.push_back("service=\"" + options.name + "\"");
  auto config = config::Load(options.config_file, sets);
  if (!config.ok()) {
    std::cerr << "omnirelay " << options.run.command << ": invalid configuration:\n"
              << config.status().message() << "\n";
    return 2;
  }
  return RunNode(std::move(*config), options.run);
}

}  // namespace

int RunNode(config::NodeConfig config, const RunNodeOptions& options) {
  if (std::string error = ApplyLogFlags(options); !error.empty()) {
    std::cerr << "omnirelay " << options.command << ": " << error << "\n";
    return 2;
  }

  // Block the termination signals in every thread (before any is started);
  // this thread collects them, so no work runs in a handler.
  core::TerminationWaiter waiter;

  const auto drain_timeout =
      std::chrono::duration_cast<std::chrono::milliseconds>(config.drain_timeout);
  auto node = node::Node::Create(std::move(config));
  if (!node.ok()) {
    std::cerr << "omnirelay " << options.command << ": " << node.status().message() << "\n";
    return 2;
  }
  if (auto status = (*node)->Start(); !status.ok()) {
    std::cerr << "omnirelay " << options.command << ": " << status.message() << "\n";
    return 1;
  }
  const nlohmann::json ready = (*node)->ReadyInfo();
  if (!options.ready_file.empty() && !core::WriteReadyFile(options.ready_file, ready)) {
    std::cerr << "omnirelay " << options.command << ": cannot write ready file "
              << options.ready_file << "\n";
    (*node)->Stop();
    return 1;
  }
  core::LogInfo("node.ready", ready);

  const int signal_number = waiter.Wait();
  (*node)->Drain();
  core::LogInfo("node.draining",
                {{"signal", signal_number}, {"inFlight", (*node)->dispatcher().in_flight()}});
  const bool idle = (*node)->WaitIdle(drain_timeout);
  (*node)->Stop();
  core::LogInfo("node.stopped", {{"name", (*node)->config().service}, {"drained", idle}});
  return 0;
}

void AddServeCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<ServeOptions>();
  auto* command = app.add_subcommand("serve", "Run an OmniRelay node until SIGTERM/SIGINT");
  command->add_option("--config", options->config_file,
                      "JSON or YAML file with an omniRelay section");
  command->add_option("--set", options->sets,
                      "Override a configuration key: key=value (repeatable)");
  command->add_option("--name", options->name, "Service name (overrides omniRelay.service)");
  command
      ->add_option("--admin-address", options->admin_address,
                   "host:port of the admin endpoints (/healthz, /readyz, /metrics); port 0 = any")
      ->envname("OMNIRELAY_ADMIN_ADDRESS");
  command->add_option("--grpc-address", options->grpc_address, "gRPC inbound host:port");
  command->add_option("--http-address", options->http_address, "HTTP inbound host:port");
  AddProcessFlags(command, &options->run);
  command->callback([options, exit_code] { *exit_code = RunServe(*options); });
}

}  // namespace omnirelay::cli
