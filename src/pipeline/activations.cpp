// Reading captured activations (loraq/activations.hpp).
#include "loraq/activations.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "pipeline_util.hpp"

namespace loraq {
namespace {

bool has_tensor(const io::Checkpoint& file, const std::string& name) {
  const auto& t = file.tensors();  // sorted by name
  const auto it = std::lower_bound(t.begin(), t.end(), name,
                                   [](const io::TensorInfo& info, const std::string& n) { return info.name < n; });
  return it != t.end() && it->name == name;
}

// Checks that tensor `name` exists with shape [rows >= 1, in_features] (`matrix`) or [in_features];
// returns its row count (1 for a vector).
std::int64_t check_tensor(const io::Checkpoint& file, const std::string& weight_name, const std::string& name,
                          std::int64_t in_features, bool matrix) {
  const std::string expected = matrix ? fmt::format("[n, {}]", in_features) : fmt::format("[{}]", in_features);
  if (!has_tensor(file, name))
    throw Error(fmt::format("{}: no tensor '{}' for layer '{}' (expected {}); the capture did not record this layer",
                            file.path().string(), name, weight_name, expected));
  const std::vector<std::int64_t>& shape = file.info(name).shape;
  const bool ok = matrix ? shape.size() == 2 && shape[0] >= 1 && shape[1] == in_features
                         : shape.size() == 1 && shape[0] == in_features;
  if (!ok)
    throw Error(fmt::format("{}: tensor '{}' has shape [{}], expected {} to match layer '{}'", file.path().string(),
                            name, fmt::join(shape, ", "), expected, weight_name));
  return matrix ? shape[0] : 1;
}

}  // namespace

ActivationFile::ActivationFile(const std::filesystem::path& path) : file_(std::make_unique<io::Checkpoint>(path)) {}
ActivationFile::~ActivationFile() = default;

const std::filesystem::path& ActivationFile::path() const { return file_->path(); }

std::string ActivationFile::layer_prefix(const std::string& weight_name) {
  constexpr std::string_view suffix = ".weight";
  if (weight_name.size() > suffix.size() && weight_name.ends_with(suffix))
    return weight_name.substr(0, weight_name.size() - suffix.size());
  return weight_name;
}

void ActivationFile::check_rows(const std::string& weight_name, std::int64_t in_features) const {
  check_tensor(*file_, weight_name, layer_prefix(weight_name) + ".input_rows", in_features, true);
}

ActivationRows ActivationFile::rows(const std::string& weight_name, std::int64_t in_features) const {
  const std::string name = layer_prefix(weight_name) + ".input_rows";
  ActivationRows r;
  r.rows = check_tensor(*file_, weight_name, name, in_features, true);
  r.values = read_weight(*file_, name);  // fp32, refusing NaN and Inf with the file and tensor named
  return r;
}

std::vector<float> ActivationFile::absmax(const std::string& weight_name, std::int64_t in_features) const {
  const std::string name = layer_prefix(weight_name) + ".input_absmax";
  check_tensor(*file_, weight_name, name, in_features, false);
  return read_weight(*file_, name);
}

}  // namespace loraq
