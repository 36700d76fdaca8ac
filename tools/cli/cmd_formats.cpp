// `loraq formats`: every block format with its true storage cost, as a table or JSON.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>

#include "commands.hpp"
#include "loraq/format.hpp"

namespace loraq::cli {
namespace {

std::string block_name(const FormatInfo& f) {
  if (f.scale == ScaleType::none) return "-";
  return f.block_size == 0 ? "row" : std::to_string(f.block_size);
}

}  // namespace

Command add_formats_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("formats", "List every quantization format: bits per value (scale included), "
                                                "block size, scale type and largest element value");
  auto json = std::make_shared<bool>(false);
  auto row_length = std::make_shared<std::int64_t>(4608);
  cmd->add_flag("--json", *json, "Print JSON instead of a table");
  cmd->add_option("--row-length", *row_length,
                  "Row length for the bits-per-value column (partial blocks pay a whole scale)")
      ->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 40))
      ->capture_default_str();
  return {cmd, [json, row_length] {
    if (*json) {
      nlohmann::ordered_json out = nlohmann::ordered_json::array();
      for (const FormatInfo& f : all_formats()) {
        const ElementInfo& e = element_info(f.element);
        out.push_back({{"name", f.name},
                       {"element", e.name},
                       {"element_bits", e.bits},
                       {"block_size", f.block_size},
                       {"scale", std::string(scale_name(f))},
                       {"bits_per_value", nominal_bits_per_value(f.format)},
                       {"bits_per_value_at_row_length", bits_per_value(f.format, *row_length)},
                       {"row_length", *row_length},
                       {"element_max", e.max_value},
                       {"description", f.description}});
      }
      std::puts(out.dump(2).c_str());
      return 0;
    }
    fmt::print("{:<13} {:<8} {:>5} {:<19} {:>9} {:>12} {:>13}  {}\n", "format", "element", "block", "scale",
               "bits/val", fmt::format("bits@{}", *row_length), "element max", "description");
    for (const FormatInfo& f : all_formats()) {
      const ElementInfo& e = element_info(f.element);
      fmt::print("{:<13} {:<8} {:>5} {:<19} {:>9.4g} {:>12.4g} {:>13g}  {}\n", f.name, e.name, block_name(f),
                 std::string(scale_name(f)), nominal_bits_per_value(f.format),
                 bits_per_value(f.format, *row_length), e.max_value, f.description);
    }
    return 0;
  }};
}

}  // namespace loraq::cli
