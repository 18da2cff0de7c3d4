#pragma once
// The flags every long-running verb shares (`serve`, `echo`, `auth`, `worker`,
// `registry`): where to announce readiness and how to log.
#include <CLI/CLI.hpp>
#include <string>

namespace omnirelay::cli {

struct ProcessFlags {
  std::string ready_file;
  std::string log_level = "info";
  std::string log_file;
};

// Registers --ready-file, --log-level (env OMNIRELAY_LOG_LEVEL) and --log-file.
void AddProcessFlags(CLI::App* command, ProcessFlags* flags);

// Applies --log-level and --log-file; returns a message naming the bad flag, or "".
std::string ApplyLogFlags(const ProcessFlags& flags);

}  // namespace omnirelay::cli
