// Whole checkpoints from Python: thin wrappers over loraq/pipeline.hpp and the recipe reader.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "loraq/error.hpp"
#include "loraq/pipeline.hpp"
#include "loraq/quantized_checkpoint.hpp"
#include "loraq/recipe.hpp"

namespace loraq::python {
namespace {

// One report row with the keys of the JSON report (pipeline/reports.cpp).
nb::dict report_row(const LayerReport& r) {
  nb::dict d;
  d["name"] = r.name;
  d["out_features"] = r.out_features;
  d["in_features"] = r.in_features;
  d["method"] = r.method;
  d["residual_format"] = r.residual_format;
  d["branch_format"] = r.branch_format;
  d["rank"] = r.rank;
  d["relative_error"] = r.metrics.relative_error;
  d["branch_quant_error"] = r.metrics.branch_quant_error;
  d["bits_per_value"] = r.metrics.bits_per_value;
  d["seconds"] = r.metrics.seconds;
  d["resumed"] = r.resumed;
  return d;
}

nb::typed<nb::list, nb::dict> report_rows(const std::vector<LayerReport>& layers) {
  nb::typed<nb::list, nb::dict> rows;
  for (const LayerReport& r : layers) rows.append(report_row(r));
  return rows;
}

}  // namespace

void register_checkpoint(nb::module_& m) {
  m.def(
      "recipe_json",
      [](const std::filesystem::path& path) { return load_recipe(path).to_json(); }, nb::arg("path"),
      "A recipe file read and checked, as its canonical JSON text (every default spelled out).");
  m.def(
      "quantize_model",
      [](const std::filesystem::path& input, const std::filesystem::path& recipe, const std::filesystem::path& output,
         int threads, bool resume, bool progress, std::optional<int> layers_in_flight, const std::string& device) {
        if (threads < 0) throw Error("threads must be >= 0 (0: every core), got " + std::to_string(threads));
        if (layers_in_flight && *layers_in_flight < 1)
          throw Error("layers_in_flight must be >= 1, got " + std::to_string(*layers_in_flight));
        const Accelerator* accelerator = accelerator_for(device, "quantize_model");
        QuantizeSummary summary;
        {
          nb::gil_scoped_release release;
          QuantizeOptions options;
          options.input = input;
          options.output = output;
          options.recipe = load_recipe(recipe);
          options.threads = threads;
          options.resume = resume;
          options.progress = progress;
          if (layers_in_flight)
            options.layers_in_flight = *layers_in_flight;
          else if (accelerator)
            options.layers_in_flight = kDeviceLayersInFlight;  // else QuantizeOptions' CPU default
          options.accelerator = accelerator;
          summary = quantize_model(options);
        }
        nb::dict d;
        d["layers"] = report_rows(summary.layers);
        d["parameters"] = summary.parameters;
        d["seconds"] = summary.seconds;
        nb::list reports;
        for (const auto& path : summary.reports) reports.append(path.string());
        d["reports"] = reports;
        return d;
      },
      nb::arg("input"), nb::arg("recipe"), nb::arg("output"), nb::arg("threads") = 0, nb::arg("resume") = false,
      nb::arg("progress") = false, nb::arg("layers_in_flight").none() = nb::none(), nb::arg("device") = "cpu",
      "`loraq quantize`: quantizes a safetensors checkpoint (file, shard index or diffusers folder) with a recipe "
      "file and writes the quantized checkpoint and its reports. Returns {layers: [row dicts], parameters, seconds, "
      "reports: [paths]}.");
  m.def(
      "layer_table_json",
      [](const std::string& metadata, const std::string& what) {
        return encode_layer_table(decode_layer_table(metadata, what));
      },
      nb::arg("metadata"), nb::arg("what"),
      "A quantized checkpoint's loraq.layers metadata checked as `loraq export` checks it (loraq.Error naming "
      "`what` and the layer otherwise), as canonical JSON: every key present, activation formats null when "
      "16-bit, intermediate_activation only where set.");
  m.def(
      "evaluate",
      [](const std::filesystem::path& quantized, const std::filesystem::path& original) {
        std::vector<LayerReport> rows;
        {
          nb::gil_scoped_release release;
          rows = evaluate_quantized(quantized, original);
        }
        return report_rows(rows);
      },
      nb::arg("quantized"), nb::arg("original"),
      "`loraq eval`: each quantized layer's relative weight error against the original, as row dicts.");
  m.def(
      "export_dequantized",
      [](const std::filesystem::path& quantized, const std::filesystem::path& output, const std::string& dtype) {
        nb::gil_scoped_release release;
        export_dequantized(quantized, output, dtype);
      },
      nb::arg("quantized"), nb::arg("output"), nb::arg("dtype") = "same",
      "`loraq export --dequantized`: the effective weights under their original names, in their dtype or in "
      "`dtype` (F32, F16, BF16).");
}

}  // namespace loraq::python
