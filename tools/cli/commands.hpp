// The loraq command's subcommands: each file registers one with CLI11 and runs it.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <functional>
#include <string>

namespace loraq::cli {

// A registered subcommand: `run` is called when it was the one given on the command line.
struct Command {
  CLI::App* app;
  std::function<int()> run;
};

// Option checks that say what is wanted: CLI11's PositiveNumber answers 0 with "Value 0 not in range
// 0.000000 to 1797693134862315708145274237317043567980705675258449965989174768..." (its double max).
inline CLI::Validator above_zero(bool or_equal) {
  return CLI::Validator(
      [or_equal](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (end != text.c_str() && *end == '\0' && (or_equal ? v >= 0 : v > 0)) return {};  // NaN fails both
        return std::string("expected a number ") + (or_equal ? ">= 0" : "> 0") + ", got " + text;
      },
      or_equal ? "NONNEGATIVE" : "POSITIVE");
}
inline const CLI::Validator kPositive = above_zero(false);
inline const CLI::Validator kNonNegative = above_zero(true);

Command add_formats_command(CLI::App& app);
Command add_cast_command(CLI::App& app);
Command add_quantize_command(CLI::App& app);
Command add_export_command(CLI::App& app);
Command add_eval_command(CLI::App& app);
Command add_inspect_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_run_linear_command(CLI::App& app);

}  // namespace loraq::cli
