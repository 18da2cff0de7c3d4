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
  // Mesh identity (omniRelay.mesh.*, docs/mesh.md); any of them turns the mesh on.
  std::string node_id;
  std::vector<std::string> roles;
  std::string region;
  std::string zone;
  std::vector<std::string> labels;  // key=value
  std::vector<std::string> seeds;
  std::string cluster_name;
  std::string advertise_address;
  std::string gossip_profile;
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
  // Mesh flags, also as --set entries (JSON-encoded values).
  auto set_json = [&sets](const std::string& key, const nlohmann::json& value) {
    sets.push_back(key + "=" + value.dump());
  };
  for (const auto& [value, key] :
       {std::pair{options.node_id, "mesh.nodeId"}, std::pair{options.region, "mesh.region"},
        std::pair{options.zone, "mesh.zone"}, std::pair{options.cluster_name, "mesh.clusterName"},
        std::pair{options.advertise_address, "mesh.advertiseAddress"},
        std::pair{options.gossip_profile, "mesh.gossip.profile"}}) {
    if (!value.empty()) set_json(key, value);
  }
  if (!options.roles.empty()) set_json("mesh.roles", options.roles);
  if (!options.seeds.empty()) set_json("mesh.seeds", options.seeds);
  for (const auto& label : options.labels) {
    const auto eq = label.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::cerr << "omnirelay " << options.run.command << ": --label: '" << label
                << "' is not key=value\n";
      return 2;
    }
    set_json("mesh.labels." + label.substr(0, eq), label.substr(eq + 1));
  }
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
  command->add_option("--node-id", options->node_id, "Mesh node id (omniRelay.mesh.nodeId)");
  command->add_option("--role", options->roles, "Mesh role of this node (repeatable)");
  command->add_option("--region", options->region, "Mesh region (omniRelay.mesh.region)");
  command->add_option("--zone", options->zone, "Mesh zone (omniRelay.mesh.zone)");
  command->add_option("--label", options->labels, "Mesh label key=value (repeatable)");
  command->add_option("--seed", options->seeds, "Mesh seed host:port to join through (repeatable)");
  command->add_option("--cluster-name", options->cluster_name,
                      "Mesh cluster name; members of another cluster are refused");
  command->add_option("--advertise-address", options->advertise_address,
                      "host:port other members dial for gossip (default: the gRPC listener)");
  command->add_option("--gossip-profile", options->gossip_profile,
                      "Gossip timing profile: lan (default) or test (fast failure detection)");
  AddProcessFlags(command, &options->run);
  command->callback([options, exit_code] { *exit_code = RunServe(*options); });
}

}  // namespace omnirelay::cli
