// The quantized checkpoint layout (docs/checkpoint.md): how one quantized layer is stored as
// safetensors tensors, and how it is read back.
//
// A layer whose weight is "P.weight" is stored as
//   P.qweight         U8  [out, packed row bytes of Q1]      residual codes
//   P.wscales         U8  [out, scale bytes per row of Q1]   residual scales (absent for fp16/bf16 Q1)
//   P.wscale_global   F32 [1]                                nvfp4's per-tensor scale
//   P.lora_down       F16/BF16 [rank, in] and P.lora_up F16/BF16 [out, rank]   16-bit branch, or
//   P.lora_down.qweight/.wscales[/.wscale_global], P.lora_up.qweight/...       a quantized branch
//   P.smooth_factor   F32 [in]                               smoothing vector, when smoothed
// Every other tensor of the model is kept as it was, under its own name. The __metadata__ key
// "loraq.layers" lists the quantized layers (JSON), "loraq.recipe" the recipe, "loraq.version".
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "loraq/checkpoint.hpp"
#include "loraq/io.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq {

inline constexpr const char* kLayersKey = "loraq.layers";
inline constexpr const char* kRecipeKey = "loraq.recipe";
inline constexpr const char* kVersionKey = "loraq.version";
inline constexpr const char* kFormatVersionKey = "loraq.format_version";

// What the metadata says of one quantized layer.
struct QuantizedLayerInfo {
  std::string weight_name;              // "P.weight"
  std::vector<std::int64_t> shape;      // as in the original model: [out, in], or [out, in, 1, 1] (pointwise conv)
  std::int64_t out_features = 0;        // shape[0]
  std::int64_t in_features = 0;         // the product of the other dims
  io::DType dtype = io::DType::bf16;    // of the original weight (what export writes back)
  std::string method;
  Format residual_format = Format::sint4;
  std::optional<Format> branch_format;  // set when the layer has a branch
  int rank = 0;
  bool smoothed = false;
  // The recipe's activation formats at each branch's input (what the kernels and loraq.torch
  // quantize X to); unset: 16-bit activations.
  std::optional<Format> residual_activation, branch_activation;
  // The recipe's activations.intermediate (Qt of the branch's T); unset: T in fp32.
  std::optional<Format> intermediate_activation;
};

// "P" of "P.weight" (names without ".weight" are their own prefix).
std::string layer_prefix(const std::string& weight_name);

// The tensors (names, dtypes, shapes) a layer is stored as, in name order.
std::vector<io::TensorSpec> layer_tensor_specs(const QuantizedLayerInfo& info);

// The same tensors with their bytes.
struct StoredTensor {
  io::TensorSpec spec;
  std::vector<std::byte> bytes;
};
std::vector<StoredTensor> layer_tensors(const QuantizedLayerInfo& info, const QuantizedLayer& layer);

// The metadata table of layers, and back (throws Error naming `what` on malformed JSON or values).
std::string encode_layer_table(const std::vector<QuantizedLayerInfo>& layers);
std::vector<QuantizedLayerInfo> decode_layer_table(const std::string& json, const std::string& what);

// Reads a layer back from a quantized checkpoint (or any tensor source with the same names).
using TensorBytes = std::function<std::span<const std::byte>(const std::string& name)>;
QuantizedLayer read_quantized_layer(const QuantizedLayerInfo& info, const TensorBytes& bytes_of);

}  // namespace loraq
