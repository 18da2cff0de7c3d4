#pragma once
// Shared by `omnirelay serve` and `omnirelay echo`: run a node until
// SIGTERM/SIGINT, announce readiness (log line `node.ready` and the optional
// ready file), then drain (`node.draining`: new calls Unavailable / 503,
// in-flight calls finish within the configured drain timeout) and stop
// (`node.stopped`). Returns the process exit code.
#include <string>

#include "omnirelay/cli/process_flags.h"
#include "omnirelay/config/config.h"

namespace omnirelay::cli {

struct RunNodeOptions : ProcessFlags {
  std::string command = "serve";  // for error messages
};

int RunNode(config::NodeConfig config, const RunNodeOptions& options);

}  // namespace omnirelay::cli
