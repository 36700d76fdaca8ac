// Small pieces the whole-model operations share.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "loraq/activations.hpp"
#include "loraq/checkpoint.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq {

// A weight as fp32, refusing NaN and Inf (the message names the file and tensor); the mapped pages
// of the tensor are released afterwards, so reading a model does not grow the resident set.
std::vector<float> read_weight(const io::Checkpoint& checkpoint, const std::string& name);

// The branch rank `recipe` gives a [out, in] layer (0 for a method without a branch). Throws Error
// naming the layer when it exceeds min(out, in) or the budget leaves no rank: checked for every
// layer before a run starts.
int layer_branch_rank(const LayerRecipe& recipe, const std::string& layer, std::int64_t out, std::int64_t in);

// Refuses a run before it starts when a layer lacks the activations it needs: with a file, the input
// rows of every layer (for the output SQNR), and the absmax of every smoothed layer; a smoothed layer
// without a file is an error too. Messages name the layer and the file.
void check_layer_activations(const ActivationFile* file, const LayerRecipe& recipe, const std::string& layer,
                             std::int64_t in_features);

// A layer's captured activations, read for the time it is quantized.
struct LayerActivations {
  ActivationRows rows;
  std::vector<float> absmax;
  void attach(LayerInput& input) const;  // points the input's activation spans here
};
LayerActivations read_layer_activations(const ActivationFile* file, const LayerRecipe& recipe, const std::string& layer,
                                        std::int64_t in_features);

// A layer's metrics as JSON (output_sqnr_db only when measured; +inf as the string "inf"), and back.
nlohmann::ordered_json metrics_to_json(const LayerMetrics& m);
LayerMetrics metrics_from_json(const nlohmann::json& j);

std::string read_text_file(const std::filesystem::path& path);  // "" when missing
void write_text_file_atomic(const std::filesystem::path& path, const std::string& text);

// Copies a diffusers folder's config.json next to a folder output (so diffusers can load it).
void copy_model_config(const std::filesystem::path& input, const std::filesystem::path& output);

// Where reports go: "<output folder>/<name>" or "<output file without .safetensors>.<name>".
std::filesystem::path report_stem(const std::filesystem::path& output, const std::string& name);

}  // namespace loraq
