// `omnirelay config validate FILE [--set k=v]...`: loads and validates a
// configuration exactly as `serve` would, prints the effective configuration
// (JSON) on success, or every problem with its key path and exits 2.
#include <iostream>

#include "omnirelay/cli/commands.h"
#include "omnirelay/config/config.h"

namespace omnirelay::cli {

void AddConfigCommand(CLI::App& app, int* exit_code) {
  auto* command = app.add_subcommand("config", "Configuration tools");
  command->require_subcommand(1);
  auto file = std::make_shared<std::string>();
  auto sets = std::make_shared<std::vector<std::string>>();
  auto quiet = std::make_shared<bool>(false);
  auto* validate = command->add_subcommand("validate", "Validate a configuration file");
  validate->add_option("file", *file, "JSON or YAML file")->required();
  validate->add_option("--set", *sets, "Override a key: key=value (repeatable)");
  validate->add_flag("--quiet", *quiet, "Print nothing on success");
  validate->callback([file, sets, quiet, exit_code] {
    auto config = config::Load(*file, *sets);
    if (!config.ok()) {
      std::cerr << "omnirelay config validate: " << *file << " is invalid:\n"
                << config.status().message() << "\n";
      *exit_code = 2;
      return;
    }
    if (!*quiet) std::cout << config::ToJson(*config).dump(2) << "\n";
    *exit_code = 0;
  });
}

}  // namespace omnirelay::cli
