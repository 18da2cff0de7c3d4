// `omnirelay echo`: a node with only the echo procedure set, for demos,
// tests and the relay benchmark's backends.
//
//   omnirelay echo --grpc-address 127.0.0.1:7001 --max-concurrency 32 --latency 2ms --instance b1
#include <iostream>

#include "omnirelay/cli/commands.h"
#include "omnirelay/cli/run_node.h"
#include "omnirelay/core/request_meta.h"

namespace omnirelay::cli {
namespace {

struct EchoOptions {
  std::string grpc_address = "127.0.0.1:0";
  std::string http_address;
  std::string admin_address = "127.0.0.1:0";
  std::string instance = "echo";
  std::string latency = "0ms";
  int max_concurrency = 0;
  int threads = 2;
  std::vector<std::string> procedures;
  std::vector<std::string> sets;
  RunNodeOptions run;
};

int RunEcho(const EchoOptions& options) {
  auto latency = core::ParseDuration(options.latency);
  if (!latency) {
    std::cerr << "omnirelay echo: --latency: '" << options.latency << "' is not a duration\n";
    return 2;
  }
  nlohmann::json root = {{"omniRelay",
                          {{"service", options.instance},
                           {"admin", {{"address", options.admin_address}}},
                           {"inbounds", nlohmann::json::object()},
                           {"echo",
                            {{"instance", options.instance},
                             {"maxConcurrency", options.max_concurrency},
                             {"latency", options.latency},
                             {"procedures", options.procedures}}}}}};
  if (!options.grpc_address.empty()) {
    root["omniRelay"]["inbounds"]["grpc"] = {{"address", options.grpc_address},
                                             {"threads", options.threads}};
  }
  if (!options.http_address.empty()) {
    root["omniRelay"]["inbounds"]["http"] = {{"address", options.http_address}};
  }
  if (auto s = config::ApplySets(root, options.sets); !s.ok()) {
    std::cerr << "omnirelay echo: " << s.message() << "\n";
    return 2;
  }
  auto config = config::Parse(root);
  if (!config.ok()) {
    std::cerr << "omnirelay echo: invalid configuration:\n" << config.status().message() << "\n";
    return 2;
  }
  return RunNode(std::move(*config), options.run);
}

}  // namespace

void AddEchoCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<EchoOptions>();
  options->run.command = "echo";
  auto* command = app.add_subcommand("echo", "Run an echo backend (unary + streaming echo)");
  command->add_option("--grpc-address", options->grpc_address,
                      "gRPC inbound host:port ('' = none)");
  command->add_option("--http-address", options->http_address, "HTTP inbound host:port (optional)");
  command->add_option("--admin-address", options->admin_address, "Admin endpoints host:port");
  command->add_option("--instance", options->instance, "Instance name (x-omnirelay-instance)");
  command->add_option("--max-concurrency", options->max_concurrency,
                      "Calls in flight before ResourceExhausted (0 = unlimited)");
  command->add_option("--latency", options->latency, "Added latency per call, e.g. 5ms");
  command->add_option("--procedure", options->procedures,
                      "Also answer unary echo as service/Method (repeatable), e.g. "
                      "trace.Analytics/Process");
  command->add_option("--threads", options->threads, "gRPC completion-queue threads");
  command->add_option("--set", options->sets, "Override a configuration key: key=value");
  AddProcessFlags(command, &options->run);
  command->callback([options, exit_code] { *exit_code = RunEcho(*options); });
}

}  // namespace omnirelay::cli
