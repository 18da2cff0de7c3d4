#pragma once
// Each CLI verb lives in its own file and registers itself on the CLI11 app
// through one Add<Verb>Command() function listed here and called in main.cc.
// A command's callback stores its exit code in `*exit_code`.
#include <CLI/CLI.hpp>

namespace omnirelay::cli {

void AddServeCommand(CLI::App& app, int* exit_code);
void AddBenchmarkCommand(CLI::App& app, int* exit_code);
void AddVersionCommand(CLI::App& app, int* exit_code);
void AddEchoCommand(CLI::App& app, int* exit_code);
void AddConfigCommand(CLI::App& app, int* exit_code);
void AddAuthCommand(CLI::App& app, int* exit_code);
void AddWorkerCommand(CLI::App& app, int* exit_code);
void AddRegistryCommand(CLI::App& app, int* exit_code);

}  // namespace omnirelay::cli
