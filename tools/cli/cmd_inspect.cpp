// `loraq inspect FILE`: what a checkpoint holds, which tensors a preset selects, and for a quantized
// checkpoint its layers with their formats and sizes.
#include <fmt/format.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "commands.hpp"
#include "loraq/checkpoint.hpp"
#include "loraq/layers.hpp"
#include "loraq/quantized_checkpoint.hpp"

namespace loraq::cli {
namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::uint64_t stored_bytes(const io::Checkpoint& c, const QuantizedLayerInfo& l) {
  std::uint64_t bytes = 0;
  for (const io::TensorSpec& s : layer_tensor_specs(l)) bytes += c.info(s.name).size;
  return bytes;
}

}  // namespace

Command add_inspect_command(CLI::App& app) {
  struct Options {
    std::string path, preset = "generic";
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("inspect", "List a checkpoint's tensors, dtypes, shapes and metadata, which "
                                                "tensors a layer preset selects, and a quantized file's layers");
  cmd->add_option("checkpoint", o->path, "File, shard index or diffusers folder")->required();
  cmd->add_option("--preset", o->preset, "Layer preset to mark (pixart-sigma, sana, flux, generic, none)")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "Print JSON");
  return {cmd, [o] {
            const io::Checkpoint c(o->path);
            std::vector<TensorShape> shapes;
            for (const io::TensorInfo& t : c.tensors()) shapes.push_back({t.name, t.shape, io::is_float_dtype(t.dtype)});
            LayerSelection selection;
            selection.preset = o->preset;
            const std::vector<std::string> selected_list = select_layers(shapes, selection);
            const std::set<std::string> selected(selected_list.begin(), selected_list.end());
            std::vector<QuantizedLayerInfo> layers;
            if (const auto it = c.metadata().find(kLayersKey); it != c.metadata().end())
              layers = decode_layer_table(it->second, c.path().string());

            if (o->json) {
              nlohmann::ordered_json j;
              j["path"] = o->path;
              j["shards"] = c.shard_count();
              j["total_bytes"] = c.total_bytes();
              j["metadata"] = c.metadata();
              j["tensors"] = nlohmann::ordered_json::array();
              for (const io::TensorInfo& t : c.tensors())
                j["tensors"].push_back({{"name", t.name},
                                        {"dtype", io::dtype_name(t.dtype)},
                                        {"shape", t.shape},
                                        {"bytes", t.size},
                                        {"selected", selected.count(t.name) > 0}});
              j["preset"] = o->preset;
              j["quantized_layers"] = nlohmann::ordered_json::array();
              for (const QuantizedLayerInfo& l : layers)
                j["quantized_layers"].push_back({{"name", l.weight_name},
                                                 {"shape", l.shape},
                                                 {"method", l.method},
                                                 {"residual", format_info(l.residual_format).name},
                                                 {"branch", l.branch_format ? format_info(*l.branch_format).name : ""},
                                                 {"rank", l.rank},
                                                 {"stored_bytes", stored_bytes(c, l)}});
              fmt::print("{}\n", j.dump(2));
              return 0;
            }
            fmt::print("{}: {} tensors in {} file(s), {:.2f} MB\n", o->path, c.tensors().size(), c.shard_count(),
                       double(c.total_bytes()) / 1e6);
            for (const auto& [key, value] : c.metadata())
              fmt::print("  metadata {} = {}\n", key, value.size() > 100 ? value.substr(0, 97) + "..." : value);
            fmt::print("\n{:<64} {:<6} {:<20} {:>12}  {}\n", "tensor", "dtype", "shape", "bytes", o->preset);
            for (const io::TensorInfo& t : c.tensors())
              fmt::print("{:<64} {:<6} {:<20} {:>12}  {}\n", t.name, io::dtype_name(t.dtype), shape_text(t.shape), t.size,
                         selected.count(t.name) ? "selected" : "");
            fmt::print("\n{} of {} tensors selected by preset '{}'\n", selected.size(), c.tensors().size(), o->preset);
            if (!layers.empty()) {
              fmt::print("\nquantized layers:\n{:<56} {:<14} {:<8} {:<12} {:<12} {:>5} {:>9}\n", "layer", "shape", "method",
                         "Q1", "Q2", "rank", "bits/val");
              for (const QuantizedLayerInfo& l : layers)
                fmt::print("{:<56} {:<14} {:<8} {:<12} {:<12} {:>5} {:>9.3f}\n", l.weight_name, shape_text(l.shape),
                           l.method, format_info(l.residual_format).name,
                           l.branch_format ? format_info(*l.branch_format).name : "-", l.rank,
                           8.0 * double(stored_bytes(c, l)) / double(l.out_features * l.in_features));
            }
            return 0;
          }};
}

}  // namespace loraq::cli
