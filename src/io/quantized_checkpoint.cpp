#include "loraq/quantized_checkpoint.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "loraq/error.hpp"
#include "strict_json.hpp"

namespace loraq {
namespace {

// One packed matrix of a layer: the residual ("P"), or a branch factor ("P.lora_down", "P.lora_up").
struct Part {
  std::string base;
  Format format;
  std::int64_t rows, cols;
};

bool is_16bit(Format f) { return f == Format::fp16 || f == Format::bf16; }

std::vector<Part> parts_of(const QuantizedLayerInfo& info) {
  const std::string p = layer_prefix(info.weight_name);
  std::vector<Part> parts = {{p, info.residual_format, info.out_features, info.in_features}};
  if (info.branch_format) {
    parts.push_back({p + ".lora_down", *info.branch_format, info.rank, info.in_features});
    parts.push_back({p + ".lora_up", *info.branch_format, info.out_features, info.rank});
  }
  return parts;
}

// A 16-bit branch factor is stored as an ordinary F16/BF16 tensor; everything else as codes + scales.
bool stored_as_dtype(const Part& part, const QuantizedLayerInfo& info) {
  return part.base != layer_prefix(info.weight_name) && is_16bit(part.format);
}

void add_specs(const Part& part, bool as_dtype, std::vector<io::TensorSpec>& specs) {
  if (as_dtype) {
    specs.push_back({part.base, part.format == Format::fp16 ? io::DType::f16 : io::DType::bf16, {part.rows, part.cols}});
    return;
  }
  specs.push_back({part.base + ".qweight", io::DType::u8, {part.rows, packed_row_bytes(part.format, part.cols)}});
  if (scale_bytes(part.format) > 0)
    specs.push_back({part.base + ".wscales", io::DType::u8,
                     {part.rows, blocks_per_row(part.format, part.cols) * scale_bytes(part.format)}});
  if (format_info(part.format).tensor_scale) specs.push_back({part.base + ".wscale_global", io::DType::f32, {1}});
}

std::vector<std::byte> to_bytes(const std::vector<std::uint8_t>& v) {
  std::vector<std::byte> b(v.size());
  if (!v.empty()) std::memcpy(b.data(), v.data(), v.size());
  return b;
}

void add_tensors(const Part& part, bool as_dtype, const PackedMatrix& m, std::vector<StoredTensor>& out) {
  std::vector<io::TensorSpec> specs;
  add_specs(part, as_dtype, specs);
  for (io::TensorSpec& spec : specs) {
    std::vector<std::byte> bytes;
    if (as_dtype || spec.name.ends_with(".qweight")) bytes = to_bytes(m.codes);
    else if (spec.name.ends_with(".wscales")) bytes = to_bytes(m.scales);
    else bytes.resize(sizeof(float)), std::memcpy(bytes.data(), &m.tensor_scale, sizeof(float));
    out.push_back({std::move(spec), std::move(bytes)});
  }
}

std::span<const std::byte> sized(const TensorBytes& bytes_of, const std::string& name, std::size_t expected) {
  const std::span<const std::byte> b = bytes_of(name);
  if (b.size() != expected)
    throw Error(fmt::format("tensor '{}' holds {} bytes, the layer table implies {}", name, b.size(), expected));
  return b;
}

PackedMatrix read_part(const Part& part, bool as_dtype, const TensorBytes& bytes_of) {
  PackedMatrix m;
  m.format = part.format;
  m.rows = part.rows;
  m.cols = part.cols;
  const std::size_t code_bytes = std::size_t(part.rows * packed_row_bytes(part.format, part.cols));
  const auto codes = sized(bytes_of, as_dtype ? part.base : part.base + ".qweight", code_bytes);
  m.codes.resize(code_bytes);
  if (code_bytes) std::memcpy(m.codes.data(), codes.data(), code_bytes);
  if (!as_dtype && scale_bytes(part.format) > 0) {
    const std::size_t n = std::size_t(part.rows * blocks_per_row(part.format, part.cols) * scale_bytes(part.format));
    const auto scales = sized(bytes_of, part.base + ".wscales", n);
    m.scales.resize(n);
    if (n) std::memcpy(m.scales.data(), scales.data(), n);
  }
  if (!as_dtype && format_info(part.format).tensor_scale)
    std::memcpy(&m.tensor_scale, sized(bytes_of, part.base + ".wscale_global", sizeof(float)).data(), sizeof(float));
  return m;
}

}  // namespace

std::string layer_prefix(const std::string& weight_name) {
  return weight_name.ends_with(".weight") ? weight_name.substr(0, weight_name.size() - 7) : weight_name;
}

std::vector<io::TensorSpec> layer_tensor_specs(const QuantizedLayerInfo& info) {
  std::vector<io::TensorSpec> specs;
  for (const Part& part : parts_of(info)) add_specs(part, stored_as_dtype(part, info), specs);
  if (info.smoothed) specs.push_back({layer_prefix(info.weight_name) + ".smooth_factor", io::DType::f32, {info.in_features}});
  std::sort(specs.begin(), specs.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return specs;
}

std::vector<StoredTensor> layer_tensors(const QuantizedLayerInfo& info, const QuantizedLayer& layer) {
  std::vector<StoredTensor> out;
  const std::vector<Part> parts = parts_of(info);
  add_tensors(parts[0], false, layer.residual, out);
  if (info.branch_format) {
    if (!layer.branch) throw Error(info.weight_name + ": the layer table names a branch the method did not make");
    add_tensors(parts[1], stored_as_dtype(parts[1], info), layer.branch->down, out);
    add_tensors(parts[2], stored_as_dtype(parts[2], info), layer.branch->up, out);
  }
  if (info.smoothed) {
    std::vector<std::byte> bytes(layer.smooth.size() * sizeof(float));
    if (!bytes.empty()) std::memcpy(bytes.data(), layer.smooth.data(), bytes.size());
    out.push_back({{layer_prefix(info.weight_name) + ".smooth_factor", io::DType::f32, {info.in_features}}, std::move(bytes)});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.spec.name < b.spec.name; });
  return out;
}

namespace {
nlohmann::ordered_json format_or_null(const std::optional<Format>& f) {
  return f ? nlohmann::ordered_json(format_info(*f).name) : nlohmann::ordered_json(nullptr);
}
std::optional<Format> optional_format(const nlohmann::json& entry, const char* key) {
  const auto it = entry.find(key);  // absent in files written before loraq recorded it
  if (it == entry.end() || it->is_null()) return std::nullopt;
  return parse_format(it->get<std::string>());
}
}  // namespace

std::string encode_layer_table(const std::vector<QuantizedLayerInfo>& layers) {
  nlohmann::ordered_json table = nlohmann::ordered_json::array();
  for (const QuantizedLayerInfo& l : layers) {
    table.push_back({{"name", l.weight_name},
                     {"shape", l.shape},
                     {"dtype", io::dtype_name(l.dtype)},
                     {"method", l.method},
                     {"residual", format_info(l.residual_format).name},
                     {"branch", l.branch_format ? nlohmann::ordered_json(format_info(*l.branch_format).name) : nullptr},
                     {"rank", l.rank},
                     {"smoothed", l.smoothed},
                     {"residual_activation", format_or_null(l.residual_activation)},
                     {"branch_activation", format_or_null(l.branch_activation)}});
    // Only when set: checkpoints of recipes without it keep the bytes they had.
    if (l.intermediate_activation)
      table.back()["intermediate_activation"] = format_or_null(l.intermediate_activation);
  }
  return table.dump();
}

namespace {

// The table comes from a file's metadata, so it is read as strictly as the header around it: no
// repeated keys, bounded nesting (the table is 3 levels deep), and integers that are JSON integers
// in range: nlohmann's get<int>() would cast 1e30 or 2.5 to int (undefined behaviour, or a silent
// truncation).
constexpr int kMaxTableDepth = 4;

std::int64_t integer_in(const nlohmann::json& v, std::int64_t lo, std::int64_t hi, const std::string& what) {
  if (v.is_number_unsigned()) {  // nlohmann's type for every integer >= 0
    const std::uint64_t u = v.get<std::uint64_t>();
    if (u <= std::uint64_t(hi) && std::int64_t(u) >= lo) return std::int64_t(u);
  } else if (v.is_number_integer()) {
    const std::int64_t i = v.get<std::int64_t>();
    if (i >= lo && i <= hi) return i;
  }
  throw Error(fmt::format("{}: expected an integer in [{}, {}], got {}", what, lo, hi, v.dump()));
}

}  // namespace

std::vector<QuantizedLayerInfo> decode_layer_table(const std::string& json, const std::string& what) {
  std::vector<QuantizedLayerInfo> layers;
  const nlohmann::json table = io::parse_strict_json(json, kMaxTableDepth, std::string(kLayersKey) + " metadata",
                                                     [&](const std::string& m) { throw Error(what + ": " + m); });
  if (!table.is_array()) throw Error(what + ": " + kLayersKey + " is not a JSON array");
  std::set<std::string> names;
  try {
    for (const nlohmann::json& e : table) {
      QuantizedLayerInfo l;
      l.weight_name = e.at("name").get<std::string>();
      const std::string layer = what + ": layer '" + l.weight_name + "' of " + kLayersKey;
      if (!names.insert(l.weight_name).second) throw Error(layer + " is listed twice");
      const nlohmann::json& shape = e.at("shape");
      if (!shape.is_array()) throw Error(layer + ": shape is not a list");
      for (const nlohmann::json& d : shape) l.shape.push_back(integer_in(d, 1, 1 << 24, layer + ": shape"));
      const bool pointwise = l.shape.size() == 4 && l.shape[2] == 1 && l.shape[3] == 1;
      if (l.shape.size() != 2 && !pointwise)
        throw Error(layer + ": shape must be [out, in] or [out, in, 1, 1], got " + shape.dump());
      l.out_features = l.shape[0];
      l.in_features = l.shape[1];
      l.dtype = io::parse_dtype(e.at("dtype").get<std::string>());
      l.method = e.at("method").get<std::string>();
      l.residual_format = parse_format(e.at("residual").get<std::string>());
      if (!e.at("branch").is_null()) l.branch_format = parse_format(e.at("branch").get<std::string>());
      l.rank = int(integer_in(e.at("rank"), 0, 1 << 20, layer + ": rank"));
      l.smoothed = e.at("smoothed").get<bool>();
      l.residual_activation = optional_format(e, "residual_activation");
      l.branch_activation = optional_format(e, "branch_activation");
      l.intermediate_activation = optional_format(e, "intermediate_activation");
      if ((l.rank > 0) != l.branch_format.has_value())
        throw Error(layer + " has rank " + std::to_string(l.rank) + (l.branch_format ? " with" : " without") +
                    " a branch format");
      layers.push_back(std::move(l));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(what + ": malformed " + kLayersKey + " metadata: " + e.what());
  }
  return layers;
}

QuantizedLayer read_quantized_layer(const QuantizedLayerInfo& info, const TensorBytes& bytes_of) {
  QuantizedLayer layer;
  layer.out_features = info.out_features;
  layer.in_features = info.in_features;
  const std::vector<Part> parts = parts_of(info);
  layer.residual = read_part(parts[0], false, bytes_of);
  if (info.branch_format)
    layer.branch = LowRankBranch{read_part(parts[1], stored_as_dtype(parts[1], info), bytes_of),
                                 read_part(parts[2], stored_as_dtype(parts[2], info), bytes_of)};
  if (info.smoothed) {
    const auto b = sized(bytes_of, layer_prefix(info.weight_name) + ".smooth_factor", std::size_t(info.in_features) * sizeof(float));
    layer.smooth.resize(std::size_t(info.in_features));
    std::memcpy(layer.smooth.data(), b.data(), b.size());
  }
  return layer;
}

}  // namespace loraq
