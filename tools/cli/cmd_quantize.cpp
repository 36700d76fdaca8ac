// `loraq quantize MODEL --recipe R -o OUT`: a checkpoint in, a quantized checkpoint out.
#include <fmt/format.h>

#include <omp.h>

#include <algorithm>
#include <memory>

#include "commands.hpp"
#include "device_option.hpp"
#include "loraq/dist.hpp"
#include "loraq/pipeline.hpp"

namespace loraq::cli {
Command add_quantize_command(CLI::App& app) {
  struct Options {
    std::string input, recipe, output, isa, activations, device = "cpu";
    int threads = 0, layers_in_flight = 2;
    bool resume = false, no_progress = false;
    double max_shard_gb = 5.0;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("quantize", "Quantize a safetensors checkpoint (file, shard index or diffusers "
                                                 "folder) with a recipe, data-free and streaming");
  cmd->add_option("model", o->input, "Input checkpoint")->required();
  cmd->add_option("-r,--recipe", o->recipe, "Recipe file (recipes/*.yaml; docs/recipes.md)")->required();
  cmd->add_option("-o,--output", o->output, "Output folder (diffusers layout, sharded when large) or .safetensors file")
      ->required();
  cmd->add_option("--threads", o->threads,
                  "Threads (default: every core, shared among the processes of an mpirun on this machine); the "
                  "output bytes never depend on it")
      ->check(kNonNegative);
  CLI::Option* in_flight = cmd->add_option("--layers-in-flight", o->layers_in_flight,
                                           "Layers quantized at once, sharing the threads; peak memory grows with "
                                           "it (default 2, and 8 with --device cuda)")
                               ->check(kPositive);
  cmd->add_flag("--resume", o->resume, "Continue an interrupted run from <output>.partial");
  cmd->add_flag("--no-progress", o->no_progress, "No progress output");
  cmd->add_option("--max-shard-gb", o->max_shard_gb, "Largest output shard, in GB")->check(kPositive)
      ->capture_default_str();
  cmd->add_option("--isa", o->isa, "Force a codec path: scalar, avx2 or avx512");
  cmd->add_option("--activations", o->activations,
                  "Captured activations (docs/activations.md): the reports add each layer's output SQNR");
  add_device_option(cmd, o->device);
  return {cmd, [o, in_flight] {
            const std::unique_ptr<Accelerator> device = open_device(o->device);
            if (device && in_flight->count() == 0) o->layers_in_flight = kDeviceLayersInFlight;
            QuantizeOptions q;
            q.input = o->input;
            q.output = o->output;
            q.recipe = load_recipe(o->recipe);
            q.threads = o->threads;
            q.layers_in_flight = o->layers_in_flight;
            q.resume = o->resume;
            if (o->no_progress) q.progress = false;
            q.max_shard_bytes = static_cast<std::uint64_t>(o->max_shard_gb * 1e9);
            if (!o->isa.empty()) q.isa = parse_isa(o->isa);
            q.activations = o->activations;
            q.accelerator = device.get();
            // Under mpirun every process runs this; they share the layers and this machine's cores.
            const std::unique_ptr<ProcessGroup> group = default_process_group();
            q.group = group.get();
            if (q.threads == 0 && group->size() > 1)
              q.threads = std::max(1, omp_get_max_threads() / local_process_count());
            const QuantizeSummary s = quantize_model(q);
            if (group->rank() != 0) return 0;
            double weighted = 0, bits = 0;
            for (const LayerReport& r : s.layers) {
              const double n = double(r.out_features * r.in_features);
              weighted += r.metrics.relative_error * n, bits += r.metrics.bits_per_value * n;
            }
            fmt::print("quantized {} layers ({:.1f} M parameters) in {:.1f} s: mean relative error {:.4e}, {:.3f} bits "
                       "per value\nwrote {}\nreports: {}\n",
                       s.layers.size(), double(s.parameters) / 1e6, s.seconds, weighted / double(s.parameters),
                       bits / double(s.parameters), o->output, s.reports.empty() ? "" : s.reports.back().string());
            return 0;
          }};
}

Command add_export_command(CLI::App& app) {
  struct Options {
    std::string input, output, dtype = "same";
    bool dequantized = false;
    double max_shard_gb = 5.0;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("export", "Write a quantized checkpoint's effective weights back under the "
                                               "original names (fake quantization for diffusers)");
  cmd->add_option("quantized", o->input, "Quantized checkpoint")->required();
  cmd->add_option("-o,--output", o->output, "Output folder or .safetensors file")->required();
  cmd->add_flag("--dequantized", o->dequantized, "Effective weights W = Q1 + up @ down, in the original dtype")
      ->required();
  cmd->add_option("--dtype", o->dtype, "Dtype of the exported weights: same, F32, F16 or BF16")
      ->transform(CLI::IsMember({"same", "F32", "F16", "BF16"}, CLI::ignore_case))
      ->capture_default_str();
  cmd->add_option("--max-shard-gb", o->max_shard_gb, "Largest output shard, in GB")->check(kPositive);
  return {cmd, [o] {
            export_dequantized(o->input, o->output, o->dtype, static_cast<std::uint64_t>(o->max_shard_gb * 1e9));
            fmt::print("wrote {}\n", o->output);
            return 0;
          }};
}

Command add_eval_command(CLI::App& app) {
  struct Options {
    std::string quantized, original, report;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("eval", "Per-layer weight error of a quantized checkpoint against its original");
  cmd->add_option("quantized", o->quantized, "Quantized checkpoint")->required();
  cmd->add_option("original", o->original, "The checkpoint it was made from")->required();
  cmd->add_option("--report", o->report, "Also write <stem>.json, .csv and .md");
  return {cmd, [o] {
            const std::vector<LayerReport> rows = evaluate_quantized(o->quantized, o->original);
            double weighted = 0, total = 0;
            fmt::print("{:<56} {:>12} {:>9} {:>12}\n", "layer", "shape", "bits/val", "rel. error");
            for (const LayerReport& r : rows) {
              fmt::print("{:<56} {:>12} {:>9.3f} {:>12.4e}\n", r.name, fmt::format("{}x{}", r.out_features, r.in_features),
                         r.metrics.bits_per_value, r.metrics.relative_error);
              const double n = double(r.out_features * r.in_features);
              weighted += r.metrics.relative_error * n, total += n;
            }
            fmt::print("{} layers, parameter-weighted mean relative error {:.4e}\n", rows.size(),
                       total > 0 ? weighted / total : 0.0);
            if (!o->report.empty()) write_reports(rows, o->report, "loraq eval " + o->quantized);
            return 0;
          }};
}

}  // namespace loraq::cli
