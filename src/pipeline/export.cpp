// `loraq export --dequantized` and `loraq eval`: the effective weights of a quantized checkpoint.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "loraq/pipeline.hpp"
#include "loraq/quantized_checkpoint.hpp"
#include "pipeline_util.hpp"

namespace loraq {
namespace {

std::vector<QuantizedLayerInfo> layer_table(const io::Checkpoint& q) {
  const auto it = q.metadata().find(kLayersKey);
  if (it == q.metadata().end())
    throw Error(q.path().string() + ": not a loraq quantized checkpoint (no " + kLayersKey + " metadata)");
  return decode_layer_table(it->second, q.path().string());
}

// A layer's tensors, copied out of the mapping, whose pages are then handed back: a whole checkpoint
// streams through in bounded memory.
QuantizedLayer read_layer(const io::Checkpoint& q, const QuantizedLayerInfo& info) {
  QuantizedLayer layer = read_quantized_layer(info, [&](const std::string& name) { return q.bytes(name); });
  for (const io::TensorSpec& s : layer_tensor_specs(info)) q.release(s.name);
  return layer;
}

}  // namespace

StoredLinear load_quantized_linear(const std::filesystem::path& quantized, const std::string& layer) {
  const io::Checkpoint q(quantized);
  const std::vector<QuantizedLayerInfo> layers = layer_table(q);
  const std::string weight = layer.ends_with(".weight") ? layer : layer + ".weight";
  for (const QuantizedLayerInfo& info : layers) {
    if (info.weight_name != weight) continue;
    StoredLinear out{info, read_layer(q, info), {}};
    const std::string bias = layer_prefix(info.weight_name) + ".bias";
    const auto& all = q.tensors();
    if (std::any_of(all.begin(), all.end(), [&](const io::TensorInfo& t) { return t.name == bias; }))
      out.bias = read_weight(q, bias);
    return out;
  }
  std::string known;
  for (std::size_t i = 0; i < layers.size() && i < 4; ++i) known += (i ? ", " : "") + layers[i].weight_name;
  throw Error(fmt::format("{}: no quantized layer '{}' (it has {} layers{}{})", q.path().string(), weight, layers.size(),
                          layers.empty() ? "" : ": ", known + (layers.size() > 4 ? ", ..." : "")));
}

void export_dequantized(const std::filesystem::path& quantized, const std::filesystem::path& output,
                        const std::string& dtype, std::uint64_t max_shard_bytes) {
  const io::Checkpoint q(quantized);
  io::refuse_output_over_input(q, output, "export");
  const std::vector<QuantizedLayerInfo> layers = layer_table(q);
  std::map<std::string, const QuantizedLayerInfo*> layer_of_weight;
  std::map<std::string, bool> layout_tensor;
  std::vector<io::TensorSpec> specs;
  for (const QuantizedLayerInfo& l : layers) {
    layer_of_weight[l.weight_name] = &l;
    for (const io::TensorSpec& s : layer_tensor_specs(l)) layout_tensor[s.name] = true;
    specs.push_back({l.weight_name, dtype == "same" ? l.dtype : io::parse_dtype(dtype), l.shape});
  }
  for (const io::TensorInfo& t : q.tensors())
    if (!layout_tensor.count(t.name)) specs.push_back({t.name, t.dtype, t.shape});
  std::map<std::string, std::string> metadata;
  for (const auto& [key, value] : q.metadata())
    if (key != kLayersKey) metadata[key] = value;
  metadata["loraq.dequantized"] = "true";
  io::CheckpointWriter writer(output, specs, metadata, {max_shard_bytes, "diffusion_pytorch_model"});
  for (const io::TensorSpec& spec : writer.order()) {
    if (const auto it = layer_of_weight.find(spec.name); it != layer_of_weight.end()) {
      const std::vector<float> w = effective_weight(read_layer(q, *it->second));
      std::vector<std::byte> bytes(w.size() * io::dtype_size(spec.dtype));
      io::from_float32(spec.dtype, w, bytes);
      writer.write(spec.name, bytes);
    } else {
      writer.write(spec.name, q.bytes(spec.name));
      q.release(spec.name);
    }
  }
  writer.finish();
  copy_model_config(quantized, output);
}

std::vector<LayerReport> evaluate_quantized(const std::filesystem::path& quantized, const std::filesystem::path& original) {
  const io::Checkpoint q(quantized), o(original);
  std::vector<LayerReport> rows;
  for (const QuantizedLayerInfo& info : layer_table(q)) {
    const io::TensorInfo& t = o.info(info.weight_name);
    if (t.shape != info.shape)
      throw Error(fmt::format("{}: tensor '{}' has shape [{}], the quantized checkpoint says [{}]", original.string(),
                              info.weight_name, fmt::join(t.shape, ", "), fmt::join(info.shape, ", ")));
    const std::vector<float> w = read_weight(o, info.weight_name);
    const QuantizedLayer layer = read_layer(q, info);
    const std::vector<float> w_eff = effective_weight(layer);
    double signal = 0, noise = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double d = double(w_eff[i]) - double(w[i]);
      signal += double(w[i]) * double(w[i]), noise += d * d;
    }
    LayerReport row;
    row.name = info.weight_name;
    row.out_features = info.out_features;
    row.in_features = info.in_features;
    row.method = info.method;
    row.residual_format = std::string(format_info(info.residual_format).name);
    row.branch_format = info.branch_format ? std::string(format_info(*info.branch_format).name) : "";
    row.rank = info.rank;
    row.metrics.relative_error = signal > 0 ? std::sqrt(noise / signal) : std::sqrt(noise);
    std::size_t bytes = layer.residual.codes.size() + layer.residual.scales.size();
    if (layer.branch)
      bytes += layer.branch->down.codes.size() + layer.branch->down.scales.size() + layer.branch->up.codes.size() +
               layer.branch->up.scales.size();
    row.metrics.bits_per_value = 8.0 * double(bytes) / double(info.out_features * info.in_features);
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace loraq
