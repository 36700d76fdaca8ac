#include "pipeline_util.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>

#include "loraq/error.hpp"
#include "loraq/io.hpp"
#include "loraq/methods.hpp"

namespace loraq {

namespace fs = std::filesystem;

std::vector<float> read_weight(const io::Checkpoint& checkpoint, const std::string& name) {
  const io::TensorInfo& t = checkpoint.info(name);
  const std::span<const std::byte> bytes = checkpoint.bytes(name);
  std::vector<float> values(io::element_count(t.shape, name));
  io::to_float32(t.dtype, bytes, values);
  checkpoint.release(name);
  io::require_finite(values, t.shape, checkpoint.file_of(name).string(), name);
  return values;
}

void check_layer_activations(const ActivationFile* file, const LayerRecipe& recipe, const std::string& layer,
                             std::int64_t in_features) {
  if (!file) {
    if (recipe.smoothing)
      throw Error("layer '" + layer + "': the recipe smooths it (smoothing:), which needs captured activations: pass "
                  "--activations FILE (docs/activations.md)");
    return;
  }
  file->check_rows(layer, in_features);
  if (recipe.smoothing) file->absmax(layer, in_features);  // [in] floats: cheap to read twice
}

void LayerActivations::attach(LayerInput& input) const {
  input.activations = rows.values;
  input.activation_rows = rows.rows;
  input.activation_absmax = absmax;
}

LayerActivations read_layer_activations(const ActivationFile* file, const LayerRecipe& recipe, const std::string& layer,
                                        std::int64_t in_features) {
  LayerActivations a;
  if (!file) return a;
  a.rows = file->rows(layer, in_features);
  if (recipe.smoothing) a.absmax = file->absmax(layer, in_features);
  return a;
}

int layer_branch_rank(const LayerRecipe& recipe, const std::string& layer, std::int64_t out, std::int64_t in) {
  if (!method_info(recipe.method).uses_branch) return 0;
  int rank = 0;
  try {
    rank = recipe.branch_rank(in);
  } catch (const Error& e) {
    throw Error(fmt::format("layer '{}' [{} x {}]: {}", layer, out, in, e.what()));
  }
  if (rank > std::min(out, in))
    throw Error(fmt::format("layer '{}' [{} x {}]: branch rank {} exceeds min(out, in) = {}", layer, out, in, rank,
                            std::min(out, in)));
  return rank;
}

nlohmann::ordered_json metrics_to_json(const LayerMetrics& m) {
  nlohmann::ordered_json j = {{"relative_error", m.relative_error},
                              {"branch_quant_error", m.branch_quant_error},
                              {"bits_per_value", m.bits_per_value},
                              {"seconds", m.seconds}};
  if (m.output_sqnr_db) {
    if (std::isfinite(*m.output_sqnr_db)) j["output_sqnr_db"] = *m.output_sqnr_db;
    else j["output_sqnr_db"] = "inf";  // a lossless layer; JSON has no infinity
  }
  if (m.smoothing_alpha) j["smoothing_alpha"] = *m.smoothing_alpha;
  if (m.smoothing_beta) j["smoothing_beta"] = *m.smoothing_beta;
  return j;
}

LayerMetrics metrics_from_json(const nlohmann::json& j) {
  LayerMetrics m{j.at("relative_error").get<double>(), j.at("branch_quant_error").get<double>(),
                 j.at("bits_per_value").get<double>(), j.at("seconds").get<double>(), std::nullopt, std::nullopt,
                 std::nullopt};
  if (const auto it = j.find("output_sqnr_db"); it != j.end())
    m.output_sqnr_db = it->is_string() ? std::numeric_limits<double>::infinity() : it->get<double>();
  if (const auto it = j.find("smoothing_alpha"); it != j.end()) m.smoothing_alpha = it->get<double>();
  if (const auto it = j.find("smoothing_beta"); it != j.end()) m.smoothing_beta = it->get<double>();
  return m;
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_text_file_atomic(const fs::path& path, const std::string& text) {
  io::AtomicFile file(path);
  file.write(std::as_bytes(std::span<const char>(text.data(), text.size())));
  file.commit();
}

void copy_model_config(const fs::path& input, const fs::path& output) {
  if (!fs::is_directory(input) || output.extension() == ".safetensors") return;
  const fs::path config = input / "config.json";
  if (fs::exists(config)) write_text_file_atomic(output / "config.json", read_text_file(config));
}

fs::path report_stem(const fs::path& output, const std::string& name) {
  if (output.extension() == ".safetensors") return fs::path(output).replace_extension("").string() + "." + name;
  return output / name;
}

}  // namespace loraq
