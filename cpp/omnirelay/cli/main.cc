// omnirelay-native: the C++ half of the `omnirelay` command. The Python
// console script `omnirelay` (python/omnirelay/cli.py) executes this binary
// for the native verbs (serve, benchmark, ...) and implements the Python ones
// (scenario, up, ...) itself, so users see one command.
#include <iostream>

#include "omnirelay/cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"OmniRelay: an RPC mesh engine (native commands)", "omnirelay"};
  app.require_subcommand(1);
  int exit_code = 0;
  omnirelay::cli::AddServeCommand(app, &exit_code);
  omnirelay::cli::AddBenchmarkCommand(app, &exit_code);
  omnirelay::cli::AddVersionCommand(app, &exit_code);
  omnirelay::cli::AddEchoCommand(app, &exit_code);
  omnirelay::cli::AddConfigCommand(app, &exit_code);
  omnirelay::cli::AddAuthCommand(app, &exit_code);
  omnirelay::cli::AddWorkerCommand(app, &exit_code);
  omnirelay::cli::AddRegistryCommand(app, &exit_code);
  // Exit codes: 0 success (and --help), 2 usage errors (unknown verb or flag,
  // a value that does not parse), 1 failures reported by the verb itself.
  // No input may crash a verb: anything thrown from a callback (a library
  // throwing on hostile input) is reported and mapped to 1, never an abort.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int code = app.exit(error);
    return code == 0 ? 0 : 2;
  } catch (const std::exception& error) {
    std::cerr << "omnirelay: " << error.what() << "\n";
    return 1;
  } catch (...) {
    std::cerr << "omnirelay: unexpected failure\n";
    return 1;
  }
  return exit_code;
}
