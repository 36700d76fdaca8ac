// `loraq bench MODEL -o DIR`: sweep methods x formats x ranks over a checkpoint's layers.
#include <fmt/format.h>

#include <memory>

#include "commands.hpp"
#include "device_option.hpp"
#include "loraq/bench.hpp"
#include "loraq/error.hpp"

namespace loraq::cli {
namespace {

// With no configuration given: the comparison at the paper's budget of 512 bits per channel
// (SVDQuant's 16-bit rank 32), for each residual format.
std::vector<std::string> default_configs(const std::vector<std::string>& residuals) {
  std::vector<std::string> specs;
  for (const std::string& r : residuals)
    for (const std::string& s : {"rtn:" + r, "svd_lowrank:" + r + ":fp16:r32", "lorc:" + r + ":fp16:r32",
                                 "loftq:" + r + ":fp16:r32", "loraq:" + r + ":fp16:r32", "loraq:" + r + ":mxint8:b512"})
      specs.push_back(s);
  return specs;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  struct Options {
    std::string input, output, preset = "generic", activations, device = "cpu";
    std::vector<std::string> include, exclude, configs, recipes, methods, residuals, branches, params, claims;
    std::vector<int> ranks;
    std::vector<double> budgets;
    bool one_per_shape = false, resume = false, no_progress = false;
    int max_layers = 0, threads = 0, jobs_in_flight = 2;
    std::uint64_t seed = 0;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Sweep methods x formats x ranks over a checkpoint's layers: weight error (and output SQNR with "
               "activations) against bits per value, as Markdown, CSV, JSON and SVG plots");
  cmd->add_option("model", o->input, "Checkpoint: .safetensors file, shard index or diffusers folder")->required();
  cmd->add_option("-o,--output", o->output, "Folder for bench.md/.csv/.json, bench-<Q1>.svg and the resumable rows")
      ->required();
  cmd->add_option("--preset", o->preset, "Layer preset: pixart-sigma, sana, flux or generic (every 2-D weight)")
      ->capture_default_str();
  cmd->add_option("--include", o->include, "Extra glob patterns of layers to select");
  cmd->add_option("--exclude", o->exclude, "Glob patterns of layers to leave out");
  cmd->add_flag("--one-per-shape", o->one_per_shape, "Only the first selected layer of each distinct shape");
  cmd->add_option("--max-layers", o->max_layers, "At most this many layers (0: all)")->check(kNonNegative);
  cmd->add_option("-c,--config", o->configs,
                  "A configuration METHOD:Q1[:Q2:rRANK|bBUDGET], e.g. rtn:sint4, svd_lowrank:sint4:fp16:r32, "
                  "loraq:mxfp4:mxfp6_e2m3:b512 (repeatable)");
  cmd->add_option("--recipe", o->recipes, "A recipe file as one configuration (its overrides apply per layer)");
  cmd->add_option("--methods", o->methods, "Grid: methods (comma-separated)")->delimiter(',');
  cmd->add_option("--residual", o->residuals, "Grid: residual formats Q1 (default sint4)")->delimiter(',');
  cmd->add_option("--branch", o->branches, "Grid: branch formats Q2")->delimiter(',');
  cmd->add_option("--ranks", o->ranks, "Grid: branch ranks")->delimiter(',')->check(kPositive);
  cmd->add_option("--budgets", o->budgets, "Grid: branch budgets in bits per channel (512 = fp16 rank 32)")
      ->delimiter(',')
      ->check(kPositive);
  cmd->add_option("-p,--param", o->params, "NAME=VALUE for every configuration whose method has it, e.g. steps=200");
  cmd->add_option("--claim", o->claims,
                  "Check A<=B<=... per layer and in aggregate (methods or labels), e.g. loraq<=loftq<=lorc<=rtn");
  cmd->add_option("--activations", o->activations, "Captured activations (docs/activations.md): adds output SQNR");
  cmd->add_option("--seed", o->seed, "Seed of the configurations given on the command line")->capture_default_str();
  cmd->add_option("--threads", o->threads, "Threads (default: every core); errors never depend on it")
      ->check(kNonNegative);
  cmd->add_option("--jobs-in-flight", o->jobs_in_flight, "(layer, configuration) pairs run at once, sharing the threads")
      ->check(kPositive)
      ->capture_default_str();
  cmd->add_flag("--resume", o->resume, "Continue an interrupted sweep in the output folder");
  cmd->add_flag("--no-progress", o->no_progress, "No progress output");
  add_device_option(cmd, o->device);
  cmd->footer(
      "With no --config, --recipe or --methods: rtn, svd_lowrank, lorc and loftq at fp16 rank 32, and loraq at fp16 "
      "rank 32 and mxint8 at the same 512 bits per channel, for each --residual, with the claims "
      "loraq:mxint8:b512<=loftq<=lorc<=rtn and loraq:mxint8:b512<=svd_lowrank. A claim token is a method, a "
      "label, or a label without its residual field.");
  return {cmd, [o] {
            const std::unique_ptr<Accelerator> device = open_device(o->device);
            BenchOptions b;
            b.accelerator = device.get();
            b.input = o->input;
            b.output = o->output;
            b.layers = {o->preset, o->include, o->exclude};
            b.one_per_shape = o->one_per_shape;
            b.max_layers = o->max_layers;
            b.claims = o->claims;
            b.activations = o->activations;
            b.seed = o->seed;
            b.threads = o->threads;
            b.jobs_in_flight = o->jobs_in_flight;
            b.resume = o->resume;
            if (o->no_progress) b.progress = false;
            const std::vector<std::string> residuals = o->residuals.empty() ? std::vector<std::string>{"sint4"} : o->residuals;
            std::vector<std::string> specs = o->configs;
            if (!o->methods.empty()) {
              std::vector<std::string> sizes;
              for (const int r : o->ranks) sizes.push_back(fmt::format("r{}", r));
              for (const double budget : o->budgets) sizes.push_back(fmt::format("b{}", budget));
              for (const BenchConfig& c : bench_grid(o->methods, residuals, o->branches, sizes)) b.configs.push_back(c);
            } else if (specs.empty() && o->recipes.empty()) {
              specs = default_configs(residuals);
              if (b.claims.empty()) b.claims = {"loraq:mxint8:b512<=loftq<=lorc<=rtn", "loraq:mxint8:b512<=svd_lowrank"};
            }
            for (const std::string& spec : specs) b.configs.push_back(parse_bench_config(spec));
            for (const std::string& path : o->recipes) {
              Recipe recipe = load_recipe(path);
              b.configs.push_back({recipe.name, recipe.defaults, std::move(recipe)});
            }
            for (const std::string& p : o->params) {
              const auto eq = p.find('=');
              double value = 0;
              try {
                if (eq == std::string::npos) throw std::invalid_argument(p);
                std::size_t used = 0;
                value = std::stod(p.substr(eq + 1), &used);
                if (used != p.size() - eq - 1) throw std::invalid_argument(p);
              } catch (const std::exception&) {
                throw Error("--param '" + p + "': expected NAME=NUMBER, e.g. steps=200");
              }
              set_bench_param(b.configs, p.substr(0, eq), value);
            }
            const BenchResult r = run_bench(b);
            fmt::print("{} layers x {} configurations in {:.1f} s\n", r.rows.size() / r.configs.size(), r.configs.size(),
                       r.seconds);
            for (const ClaimResult& c : r.claims)
              fmt::print("claim {} ({}): holds on {}/{} layers, {} in aggregate\n", fmt::join(c.labels, " <= "), c.residual,
                         c.holding, c.layers, c.holds_in_aggregate ? "holds" : "fails");
            for (const std::filesystem::path& f : r.files) fmt::print("wrote {}\n", f.string());
            return 0;
          }};
}

}  // namespace loraq::cli
