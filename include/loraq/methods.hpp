// The method table: every quantization method once, with its parameters and their defaults.
//
// Recipes, the command line and (later) Python read this one table, as llama.cpp's quantize tool
// reads its {name, type, description} list: a recipe key is valid exactly when the table lists it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace loraq {

struct QuantizedLayer;
struct LayerInput;

enum class ParamType : std::uint8_t { integer, real, boolean };

struct MethodParam {
  std::string_view name;
  ParamType type;
  double default_value;  // booleans: 0 or 1
  double min_value;      // inclusive bounds a recipe value must respect
  double max_value;
  std::string_view description;
};

struct MethodInfo {
  std::string_view name;
  std::string_view description;
  bool uses_branch;         // has a low-rank branch (rank or budget, branch format)
  bool needs_activations;   // needs captured activation statistics
  std::span<const MethodParam> params;
  QuantizedLayer (*run)(const LayerInput& input);  // src/methods/<name>.cpp
};

std::span<const MethodInfo> all_methods();
// Throws Error listing the known methods when `name` is none of them.
const MethodInfo& method_info(std::string_view name);
// The parameter `param` of `method`, or nullptr.
const MethodParam* find_param(const MethodInfo& method, std::string_view param);

}  // namespace loraq
