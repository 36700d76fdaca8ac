// One quantized linear layer: W ~ Q1 residual + (Q2 up)(Q2 down), with what it cost and lost.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "loraq/accelerator.hpp"
#include "loraq/format.hpp"
#include "loraq/recipe.hpp"

namespace loraq {

// The low-rank branch B = up @ down, each factor stored in the branch format Q2 (fp16 and bf16 are
// formats too: their packed codes are the 16-bit values). Blocks run along the matmul's reduction
// dimension (FORMATS.md): along in_features for down [rank, in], along rank for up [out, rank].
struct LowRankBranch {
  PackedMatrix down;  // [rank, in_features]
  PackedMatrix up;    // [out_features, rank]
};

struct LayerMetrics {
  double relative_error = 0;         // ||W_eff - W||_F / ||W||_F
  double branch_quant_error = 0;     // ||Q2(B) - B||_F / ||W||_F (0 without a branch or in 16 bits)
  double bits_per_value = 0;         // stored bits (residual + branch + scales) / (out x in)
  double seconds = 0;
  // With activation rows X [n, in]: 10 log10(||X W^T||^2 / ||X W^T - Y_q||^2), the output's
  // signal-to-quantization-noise ratio in dB, where Y_q is what the quantized layer computes on X:
  // smoothing, and the recipe's activation formats per branch, included.
  std::optional<double> output_sqnr_db;
  std::optional<double> smoothing_alpha, smoothing_beta;  // when the layer is smoothed
};

struct QuantizedLayer {
  std::int64_t out_features = 0;
  std::int64_t in_features = 0;
  PackedMatrix residual;                  // Q1 codes and scales, [out, in]
  std::optional<LowRankBranch> branch;
  std::vector<float> smooth;              // per input channel, empty when not smoothed
  LayerMetrics metrics;
};

// What a method is given for one layer.
struct LayerInput {
  std::string_view name;                  // the weight tensor's name
  std::span<const float> weight;          // [out, in], row-major
  std::int64_t out_features = 0;
  std::int64_t in_features = 0;
  const LayerRecipe* recipe = nullptr;
  QuantOptions codec;                     // rounding, ISA and threads for the codecs
  // Where LoRaQ's optimization loops run: null for the CPU, else a device (loraq/accelerator.hpp)
  // for the layers whose formats it supports. Other methods ignore it.
  const Accelerator* accelerator = nullptr;
  // Optional input rows of the layer, [activation_rows, in_features] (captured activations): when
  // given, the metrics include the output SQNR on them.
  std::span<const float> activations;
  std::int64_t activation_rows = 0;
  // Per-input-channel max |x| over every captured row, [in_features]: smoothing needs it.
  std::span<const float> activation_absmax;
};

// Runs the recipe's method on one layer (the method table's entry) and fills the metrics. With
// recipe->smoothing, the method runs on W diag(s) (alpha and beta searched on the activation rows
// where the recipe leaves them to "auto"), and the layer keeps s. Throws Error naming the layer when
// smoothing lacks the activations it needs.
QuantizedLayer quantize_layer(const LayerInput& input);

// The weight the layer stands for: unpack(Q1) + up @ down, then un-smoothed, in fp32 [out, in].
std::vector<float> effective_weight(const QuantizedLayer& layer);

}  // namespace loraq
