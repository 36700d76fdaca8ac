// libFuzzer target: arbitrary bytes as the "loraq.layers" metadata of a quantized checkpoint (the JSON
// table of its layers, docs/checkpoint.md), read as `loraq export`, `eval`, `run-linear` and
// loraq.torch.load_quantized read it.
//
// The tensors the table points at are fixed: those of four valid layers, filled with arbitrary bytes
// (every code and scale byte decodes to something, NaN included). tests/fuzz/make_corpus.py writes the
// tables that describe them as seeds, so mutations start from real layers and change their shapes,
// formats, ranks and flags. Decoding must throw loraq::Error or give unique layers; reading each layer
// must throw loraq::Error or give parts of exactly the sizes its table entry implies; and every part
// read must decode, row by row, through the reference codec (the address sanitizer checks each
// access). Anything else (crash, sanitizer report, another exception, a broken promise) is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "core/block_reference.hpp"
#include "core/packing.hpp"
#include "loraq/error.hpp"
#include "loraq/format.hpp"
#include "loraq/quantized_checkpoint.hpp"

namespace {

using loraq::Format;
using loraq::PackedMatrix;
using loraq::QuantizedLayerInfo;

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_layer_table: %s\n", what);
  std::abort();
}

QuantizedLayerInfo layer(std::string name, std::vector<std::int64_t> shape, Format residual,
                         std::optional<Format> branch = {}, int rank = 0, bool smoothed = false) {
  QuantizedLayerInfo l;
  l.weight_name = std::move(name);
  l.shape = std::move(shape);
  l.out_features = l.shape[0];
  l.in_features = l.shape[1];
  l.residual_format = residual;
  l.branch_format = branch;
  l.rank = rank;
  l.smoothed = smoothed;
  return l;
}

// name -> bytes of every tensor of the seed layers (make_corpus.py's index_of_layers describes them).
const std::map<std::string, std::vector<std::byte>>& stored_tensors() {
  static const auto* const tensors = [] {
    auto* t = new std::map<std::string, std::vector<std::byte>>;
    const std::vector<QuantizedLayerInfo> seeds = {
        layer("a.weight", {8, 40}, Format::sint4),
        layer("b.weight", {16, 64}, Format::mxint4, Format::mxint8, 4, true),
        layer("c.weight", {6, 32, 1, 1}, Format::nvfp4, Format::fp16, 2),
        layer("d", {4, 33}, Format::mxfp6_e2m3, Format::mxfp4, 3),
    };
    std::uint32_t state = 12345;
    for (const QuantizedLayerInfo& l : seeds)
      for (const loraq::io::TensorSpec& spec : loraq::layer_tensor_specs(l)) {
        std::uint64_t n = loraq::io::dtype_size(spec.dtype);
        for (std::int64_t d : spec.shape) n *= std::uint64_t(d);
        std::vector<std::byte> bytes(n);
        for (std::byte& b : bytes) state = state * 1664525u + 1013904223u, b = std::byte(state >> 24);
        (*t)[spec.name] = std::move(bytes);
      }
    return t;
  }();
  return *tensors;
}

std::span<const std::byte> bytes_of(const std::string& name) {
  const auto& tensors = stored_tensors();
  const auto it = tensors.find(name);
  if (it == tensors.end()) throw loraq::Error("no tensor named '" + name + "'");  // as io::Checkpoint::bytes
  return it->second;
}

// The part is as large as the table says, and every row of it decodes.
void check_part(const PackedMatrix& m, Format format, std::int64_t rows, std::int64_t cols) {
  require(m.format == format && m.rows == rows && m.cols == cols, "a part has another format or shape");
  require(m.codes.size() == std::size_t(rows * loraq::packed_row_bytes(format, cols)), "a part's code bytes");
  const std::int64_t blocks = loraq::blocks_per_row(format, cols);
  const int scale_width = loraq::scale_bytes(format);
  require(m.scales.size() == std::size_t(rows * blocks * scale_width), "a part's scale bytes");
  std::vector<std::uint32_t> codes(std::size_t(loraq::detail::padded_cols(format, cols)));
  std::vector<std::uint32_t> scales(std::size_t(blocks + 1));
  std::vector<float> values(static_cast<std::size_t>(cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    loraq::detail::unpack_codes(loraq::element_bits(format), m.codes.data() + r * loraq::packed_row_bytes(format, cols),
                                std::int64_t(codes.size()), codes.data());
    if (scale_width > 0)
      loraq::detail::load_scales(loraq::format_info(format).scale, m.scales.data() + r * blocks * scale_width, blocks,
                                 scales.data());
    loraq::detail::reference_decode_row(format, codes.data(), scales.data(), m.tensor_scale, cols, values.data());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<QuantizedLayerInfo> table;
  try {
    table = loraq::decode_layer_table(std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
  } catch (const loraq::Error&) {
    return 0;
  }
  std::set<std::string> names;
  for (const QuantizedLayerInfo& info : table) {
    require(names.insert(info.weight_name).second, "a layer is listed twice");
    require(info.out_features == info.shape[0] && info.in_features == info.shape[1], "features are not the shape's");
    require(info.out_features >= 1 && info.in_features >= 1, "a layer has no rows or columns");
    require((info.rank > 0) == info.branch_format.has_value(), "a rank without a branch, or the other way");
    try {
      const loraq::QuantizedLayer l = loraq::read_quantized_layer(info, bytes_of);
      require(l.out_features == info.out_features && l.in_features == info.in_features, "the layer's features");
      check_part(l.residual, info.residual_format, info.out_features, info.in_features);
      require(l.branch.has_value() == info.branch_format.has_value(), "a branch the table does not name");
      if (l.branch) {
        check_part(l.branch->down, *info.branch_format, info.rank, info.in_features);
        check_part(l.branch->up, *info.branch_format, info.out_features, info.rank);
      }
      require(l.smooth.size() == (info.smoothed ? std::size_t(info.in_features) : 0), "the smoothing vector's size");
    } catch (const loraq::Error&) {
    }
  }
  return 0;
}
