#include <iostream>

#include "omnirelay/cli/commands.h"

#ifndef OMNIRELAY_VERSION
#define OMNIRELAY_VERSION "0.0.0"
#endif

namespace omnirelay::cli {

void AddVersionCommand(CLI::App& app, int* exit_code) {
  auto* command = app.add_subcommand("version", "Print the OmniRelay version");
  command->callback([exit_code] {
    std::cout << "omnirelay " << OMNIRELAY_VERSION << "\n";
    *exit_code = 0;
  });
}

}  // namespace omnirelay::cli
