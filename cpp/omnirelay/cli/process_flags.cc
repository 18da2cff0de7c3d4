#include "omnirelay/cli/process_flags.h"

#include "omnirelay/core/logging.h"

namespace omnirelay::cli {

void AddProcessFlags(CLI::App* command, ProcessFlags* flags) {
  command->add_option("--ready-file", flags->ready_file,
                      "Write a JSON file with the bound addresses and pid once listening");
  command->add_option("--log-level", flags->log_level, "trace|debug|info|warn|error|off")
      ->envname("OMNIRELAY_LOG_LEVEL");
  command->add_option("--log-file", flags->log_file,
                      "Append JSON-lines logs here (default stderr)");
}

std::string ApplyLogFlags(const ProcessFlags& flags) {
  const auto level = core::ParseLogLevel(flags.log_level);
  if (!level) return "unknown --log-level '" + flags.log_level + "'";
  core::SetLogLevel(*level);
  if (!flags.log_file.empty()) core::SetLogFile(flags.log_file);
  return "";
}

}  // namespace omnirelay::cli
