// The loraq command's subcommands: each file registers one with CLI11 and runs it.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace loraq::cli {

// A registered subcommand: `run` is called when it was the one given on the command line.
struct Command {
  CLI::App* app;
  std::function<int()> run;
};

Command add_formats_command(CLI::App& app);
Command add_cast_command(CLI::App& app);
Command add_quantize_command(CLI::App& app);
Command add_export_command(CLI::App& app);
Command add_eval_command(CLI::App& app);
Command add_inspect_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_run_linear_command(CLI::App& app);

}  // namespace loraq::cli
