// Block formats: what a recipe names (../shared/FORMATS.md, "Block formats").
//
// A block format quantizes a row-major matrix [rows, cols] along its rows (the reduction dimension
// of the matmul it takes part in) in blocks of `block_size` values sharing one scale. Every format is
// one row of one constexpr table (format_table.cpp); a static_assert keeps the table and the enum in
// step. Each format has two operations:
//   fake_quantize: float in, float out (the values the quantized tensor stands for);
//   pack / unpack: element codes and scales in the documented byte layout, and back.
// fake_quantize(x) == unpack(pack(x)) bit for bit, on every code path (scalar, AVX2, AVX-512).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "loraq/element.hpp"
#include "loraq/isa.hpp"

namespace loraq {

enum class Format : std::uint8_t {
  mxfp8_e4m3,
  mxfp8_e5m2,
  mxfp6_e2m3,
  mxfp6_e3m2,
  mxfp4,
  mxint8,
  mxint4,
  sint4,
  nvfp4,
  int8_channel,
  fp16,
  bf16,
};
inline constexpr int kFormatCount = 12;

enum class ScaleType : std::uint8_t {
  none,  // fp16, bf16: a plain cast
  e8m0,  // MX shared exponent, one uint8 per block
  fp16,  // sint4: one little-endian fp16 per block
  e4m3,  // nvfp4: one uint8 e4m3 per block, times one fp32 scale per tensor
  fp32,  // int8_channel: one little-endian fp32 per row
};

struct FormatInfo {
  Format format;
  std::string_view name;
  Element element;
  int block_size;  // values per scale; 0 = the whole row
  ScaleType scale;
  bool tensor_scale;  // one extra fp32 scale for the whole tensor (nvfp4)
  std::string_view description;
};

std::span<const FormatInfo> all_formats();
const FormatInfo& format_info(Format f);
// Accepts the table's names and the aliases FORMATS.md gives (mxfp4_e2m1). Throws Error listing the
// known names when `name` is none of them.
Format parse_format(std::string_view name);

// Bits of one stored value including scale overhead, for rows of `row_length` values (partial last
// blocks pay a whole scale; packed rows are padded to whole blocks). The per-tensor fp32 of nvfp4
// is not counted (it is 32 bits per tensor, not per value).
double bits_per_value(Format f, std::int64_t row_length);
// Bits per value for long rows: element bits + scale bits / block size.
double nominal_bits_per_value(Format f);
// Largest finite value a block can represent relative to its scale (element max), and the largest
// absolute value the format can hold at all (fp32 for the scaled formats).
float element_max(Format f);
int element_bits(Format f);
int scale_type_bytes(ScaleType type);  // bytes of one stored scale (0 for none)
// How `loraq formats` and loraq.formats() name a format's scales: "-", "e8m0", "fp16", "e4m3",
// "e4m3 + fp32/tensor" (NVFP4's two-level scale) or "fp32".
std::string_view scale_name(const FormatInfo& f);
int scale_bytes(Format f);

std::int64_t blocks_per_row(Format f, std::int64_t cols);
std::int64_t packed_row_bytes(Format f, std::int64_t cols);  // code bytes of one padded row

struct QuantOptions {
  Rounding rounding = Rounding::nearest_even;
  std::optional<Isa> isa;  // nullopt: the best the CPU has (or the LORAQ_ISA environment variable)
  int threads = 0;         // 0: OpenMP's default; results never depend on the thread count
};

// out[r, c] = the value x[r, c] quantizes to. `in` and `out` hold rows * cols floats (may alias).
void fake_quantize(Format f, std::span<const float> in, std::span<float> out, std::int64_t rows,
                   std::int64_t cols, const QuantOptions& options = {});

// Codes and scales in the layout of FORMATS.md "Packed storage".
struct PackedMatrix {
  Format format = Format::fp16;
  std::int64_t rows = 0;
  std::int64_t cols = 0;               // logical; packed rows are padded to whole blocks
  std::vector<std::uint8_t> codes;     // rows x packed_row_bytes(format, cols)
  std::vector<std::uint8_t> scales;    // rows x blocks_per_row x scale_bytes, little-endian
  float tensor_scale = 1.0f;           // nvfp4's per-tensor fp32; 1 for every other format
};

PackedMatrix pack(Format f, std::span<const float> in, std::int64_t rows, std::int64_t cols,
                  const QuantOptions& options = {});
void unpack(const PackedMatrix& packed, std::span<float> out, const QuantOptions& options = {});
// The same into a new rows x cols vector.
std::vector<float> unpack(const PackedMatrix& packed, const QuantOptions& options = {});

}  // namespace loraq
