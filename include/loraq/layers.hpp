// Layer selection: which tensors of a checkpoint are quantized linear weights.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "loraq/recipe.hpp"

namespace loraq {

// A tensor as selection sees it: its name and shape.
struct TensorShape {
  std::string name;
  std::vector<std::int64_t> shape;
  bool is_float = true;  // F16, BF16, F32, F64: integer tensors are never weights
};

struct LayerPreset {
  std::string_view name;
  std::string_view description;
  std::span<const std::string_view> include;  // glob patterns over tensor names
  std::span<const std::string_view> exclude;
  // true: tensors the include patterns match but whose shape is not a linear weight are passed
  // over ("generic" selects by shape); false: they are an Error, since the preset names specific
  // linear layers and a different shape means a different model.
  bool skip_other_shapes = false;
};

std::span<const LayerPreset> all_layer_presets();
const LayerPreset& layer_preset(std::string_view name);  // throws Error listing the presets

// Glob over whole tensor names: '*' matches any run of characters (dots included), '?' one
// character, '[abc]' / '[a-z]' / '[!a]' (or '[^a]') one character of a class (a ']' right after
// '[' or '[!' is a member); everything else, including a '[' that is never closed, matches itself.
// No escapes. Iterative: O(pattern x name) at worst, linear for ordinary patterns.
bool glob_match(std::string_view pattern, std::string_view name);

// A linear layer's weight: 2-D [out, in], or 4-D [out, in, 1, 1] (a pointwise convolution, as in
// SANA's GLUMBConv, which is a linear layer over channels; quantize it as the 2-D [out, in]).
bool is_linear_weight_shape(std::span<const std::int64_t> shape);

// The names of the selected tensors, in the order given: floating-point tensors matched by the
// preset's or the selection's include patterns and by none of the preset's or the selection's
// exclude patterns (excludes win). Integer tensors are never selected. A selected tensor whose shape
// is not a linear weight (is_linear_weight_shape) is an Error naming the tensor, its shape and the
// include pattern, unless only a skip_other_shapes preset matched it (then it is passed over).
// Throws Error for an unknown preset.
std::vector<std::string> select_layers(std::span<const TensorShape> tensors, const LayerSelection& selection);

}  // namespace loraq
