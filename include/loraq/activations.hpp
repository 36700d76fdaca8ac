// Captured activations of a model's linear layers, as the capture hooks write them (Python,
// loraq.torch) and as `loraq quantize/bench --activations` read them: one safetensors file where,
// for each layer whose weight is "P.weight",
//   P.input_rows    [n, in_features]   a sample of the layer's input rows (F32, F16 or BF16)
//   P.input_absmax  [in_features]      per-input-channel max |x| over every captured row
// Both are optional per layer; a reader asking for one that is missing gets an Error naming the
// file, the layer and the expected tensor (docs/activations.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace loraq {

namespace io {
class Checkpoint;
}

struct ActivationRows {
  std::vector<float> values;  // [rows, in_features]
  std::int64_t rows = 0;
};

class ActivationFile {
 public:
  explicit ActivationFile(const std::filesystem::path& path);  // throws Error on an unreadable file
  ~ActivationFile();
  ActivationFile(const ActivationFile&) = delete;
  ActivationFile& operator=(const ActivationFile&) = delete;

  const std::filesystem::path& path() const;
  // Throws the Error rows() would, without reading anything: to refuse a run before it starts.
  void check_rows(const std::string& weight_name, std::int64_t in_features) const;
  // The input rows of the layer whose weight tensor is `weight_name` and has `in_features` columns.
  // Throws Error when the file lacks them, their shape is not [n >= 1, in_features], or they hold NaN/Inf.
  ActivationRows rows(const std::string& weight_name, std::int64_t in_features) const;
  // The per-channel absolute maxima, [in_features]; same errors.
  std::vector<float> absmax(const std::string& weight_name, std::int64_t in_features) const;

  static std::string layer_prefix(const std::string& weight_name);  // "P.weight" -> "P"

 private:
  std::unique_ptr<io::Checkpoint> file_;
};

}  // namespace loraq
