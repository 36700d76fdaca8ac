// `loraq bench`: a sweep of methods x formats x ranks over the selected layers of a checkpoint,
// in weight space (and in output space when activations are given), written as tables (Markdown,
// CSV, JSON) and plots (SVG) of error against bits per value: the paper's Tables 3-5 without images.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "loraq/accelerator.hpp"
#include "loraq/pipeline.hpp"
#include "loraq/recipe.hpp"

namespace loraq {

// One column of the sweep: a method with its formats and rank (or budget), applied to every layer.
struct BenchConfig {
  std::string label;   // "loraq:sint4:mxint8:b512", "svd_lowrank:sint4:fp16:r32", "rtn:mxfp4", or a recipe's name
  LayerRecipe recipe;  // for a recipe file: its defaults (its overrides apply per layer through `source`)
  std::optional<Recipe> source;  // set when the configuration is a recipe file
};

// Parses "METHOD:RESIDUAL[:BRANCH:rRANK|bBUDGET]" (branch and size only, and then both, for methods
// with a branch). Throws Error naming the spec and what was expected.
BenchConfig parse_bench_config(const std::string& spec);

// Every method x residual x (branch x size, for methods with a branch) combination, in that order.
// `sizes` are "r32" / "b512" as in parse_bench_config.
std::vector<BenchConfig> bench_grid(const std::vector<std::string>& methods, const std::vector<std::string>& residuals,
                                    const std::vector<std::string>& branches, const std::vector<std::string>& sizes);

// Sets `param` = value in every configuration whose method has it. Throws Error when none has it,
// or the value is out of the table's range.
void set_bench_param(std::vector<BenchConfig>& configs, const std::string& param, double value);

struct BenchOptions {
  std::filesystem::path input;          // checkpoint: file, index or diffusers folder
  std::filesystem::path output;         // folder for bench.{md,csv,json} and bench-<residual>.svg
  LayerSelection layers;                // preset and globs (the recipe's `layers` key)
  bool one_per_shape = false;           // the first selected layer of each distinct shape only
  int max_layers = 0;                   // 0: all selected layers
  std::vector<BenchConfig> configs;
  std::vector<std::string> claims;      // "loraq<=loftq<=lorc<=rtn": each token a method, a label, or a
                                        // label without its residual field ("loraq:mxint8:b512")
  std::filesystem::path activations;    // captured activations: adds output SQNR (empty: none)
  std::uint64_t seed = 0;               // for configurations that are not recipe files
  int threads = 0;                      // 0: every core; the errors never depend on it
  int jobs_in_flight = 2;               // (layer, configuration) pairs run at once, sharing the threads
  bool resume = false;                  // continue from <output>/rows.jsonl
  std::optional<bool> progress;         // as QuantizeOptions::progress
  const Accelerator* accelerator = nullptr;  // as QuantizeOptions::accelerator
};

struct BenchRow {
  std::string layer;
  std::int64_t out_features = 0, in_features = 0;
  std::size_t config = 0;  // index into the configurations
  int rank = 0;
  LayerMetrics metrics;
};

struct ClaimResult {
  std::string claim, residual;              // the claim, evaluated among one residual format's configurations
  std::vector<std::string> labels;          // the configurations it compares, best first
  std::size_t layers = 0, holding = 0;      // layers compared, and those where every "<=" holds
  std::vector<std::string> failures;        // one line per failing layer: "layer: a 0.031 > b 0.029"
  bool holds_in_aggregate = false;          // on the parameter-weighted mean errors
};

struct BenchResult {
  std::vector<BenchConfig> configs;
  std::vector<BenchRow> rows;               // layer-major, configurations in order
  std::vector<ClaimResult> claims;
  std::vector<std::filesystem::path> files; // what was written
  double seconds = 0;
};

// Runs the sweep, writing each finished (layer, configuration) to <output>/rows.jsonl as it goes
// (so --resume skips it), then the tables and plots. Throws Error for unknown methods, formats, claim
// tokens that match no or several configurations of a residual format, or layers the activation
// file lacks, before any work starts.
BenchResult run_bench(const BenchOptions& options);

// The tables and plots of a finished sweep (run_bench calls it): bench.md, bench.csv, bench.json
// and one bench-<residual>.svg per residual format, in `folder`.
std::vector<std::filesystem::path> write_bench_reports(const BenchResult& result, const std::filesystem::path& folder,
                                                       const std::string& title);

}  // namespace loraq
