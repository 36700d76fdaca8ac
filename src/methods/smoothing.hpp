// Smoothing and the quantized layer's output on activation rows (internal to src/methods; the
// public entry is quantize_layer, which applies both when the recipe and the input ask for them).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "loraq/quantized_layer.hpp"

namespace loraq::methods {

// X W^T over the input's activation rows, [rows, out].
std::vector<float> reference_output(const LayerInput& input);

// What the quantized layer computes on rows X [rows, in]: Qa1(X / s) P^T + (Qa2(X / s) down^T) up^T,
// with P, down and up dequantized, s the layer's smoothing vector (none: 1) and Qa1, Qa2 the
// recipe's activation formats (none: unquantized), per-token blocks along in_features.
std::vector<float> quantized_output(const QuantizedLayer& layer, std::span<const float> x, std::int64_t rows,
                                    const LayerRecipe& recipe, const QuantOptions& codec);

struct SmoothingChoice {
  double alpha = 0, beta = 0;
  std::vector<float> factors;  // s, [in_features]
  double output_error = 0;     // the proxy's squared output error (0 when nothing was searched)
};

// The smoothing of the input's recipe (recipe->smoothing set): alpha and beta as given, the unset
// ones by grid search on the activation rows (smoothing.cpp). Needs activation_absmax, and the rows
// when something is searched (quantize_layer checks both).
SmoothingChoice choose_smoothing(const LayerInput& input);

}  // namespace loraq::methods
