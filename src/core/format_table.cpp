// The one table of block formats, and the arithmetic every user of the table shares.
#include <array>
#include <string>

#include "loraq/error.hpp"
#include "loraq/format.hpp"

namespace loraq {
namespace {

constexpr std::array<FormatInfo, kFormatCount> kFormats = {{
    {Format::mxfp8_e4m3, "mxfp8_e4m3", Element::e4m3, 32, ScaleType::e8m0, false, "OCP MX v1.0 FP8 (E4M3)"},
    {Format::mxfp8_e5m2, "mxfp8_e5m2", Element::e5m2, 32, ScaleType::e8m0, false, "OCP MX v1.0 FP8 (E5M2)"},
    {Format::mxfp6_e2m3, "mxfp6_e2m3", Element::e2m3, 32, ScaleType::e8m0, false, "OCP MX v1.0 FP6 (E2M3)"},
    {Format::mxfp6_e3m2, "mxfp6_e3m2", Element::e3m2, 32, ScaleType::e8m0, false, "OCP MX v1.0 FP6 (E3M2)"},
    {Format::mxfp4, "mxfp4", Element::e2m1, 32, ScaleType::e8m0, false, "OCP MX v1.0 FP4 (E2M1)"},
    {Format::mxint8, "mxint8", Element::mx_int8, 32, ScaleType::e8m0, false, "OCP MX v1.0 INT8 (k/64)"},
    {Format::mxint4, "mxint4", Element::mx_int4, 32, ScaleType::e8m0, false, "MX INT4 (k/4, same scale rule)"},
    {Format::sint4, "sint4", Element::int4, 64, ScaleType::fp16, false, "int4 -7..7, fp16 scale per 64 (SVDQuant)"},
    {Format::nvfp4, "nvfp4", Element::e2m1, 16, ScaleType::e4m3, true, "E2M1, e4m3 scale per 16, fp32 per tensor"},
    {Format::int8_channel, "int8_channel", Element::int8, 0, ScaleType::fp32, false, "int8 -127..127, fp32 per row"},
    {Format::fp16, "fp16", Element::fp16, 1, ScaleType::none, false, "IEEE half: a cast"},
    {Format::bf16, "bf16", Element::bf16, 1, ScaleType::none, false, "bfloat16: a cast"},
}};

constexpr bool table_matches_enum() {
  for (int i = 0; i < kFormatCount; ++i)
    if (static_cast<int>(kFormats[i].format) != i) return false;
  return true;
}
static_assert(table_matches_enum(), "kFormats must list every Format once, in enum order");
static_assert(static_cast<int>(Format::bf16) + 1 == kFormatCount, "kFormatCount must cover the enum");

}  // namespace

std::span<const FormatInfo> all_formats() { return kFormats; }
const FormatInfo& format_info(Format f) { return kFormats[static_cast<std::size_t>(f)]; }

Format parse_format(std::string_view name) {
  if (name == "mxfp4_e2m1") return Format::mxfp4;
  std::string known;
  for (const FormatInfo& info : kFormats) {
    if (info.name == name) return info.format;
    known += (known.empty() ? "" : ", ") + std::string(info.name);
  }
  throw Error("unknown format '" + std::string(name) + "': expected one of " + known);
}

int element_bits(Format f) { return element_info(format_info(f).element).bits; }
float element_max(Format f) { return element_info(format_info(f).element).max_value; }

std::string_view scale_name(const FormatInfo& f) {
  switch (f.scale) {
    case ScaleType::none: return "-";
    case ScaleType::e8m0: return "e8m0";
    case ScaleType::fp16: return "fp16";
    case ScaleType::e4m3: return f.tensor_scale ? "e4m3 + fp32/tensor" : "e4m3";
    case ScaleType::fp32: return "fp32";
  }
  return "?";
}

int scale_type_bytes(ScaleType type) {
  switch (type) {
    case ScaleType::none: return 0;
    case ScaleType::e8m0: return 1;
    case ScaleType::e4m3: return 1;
    case ScaleType::fp16: return 2;
    case ScaleType::fp32: return 4;
  }
  return 0;
}

int scale_bytes(Format f) { return scale_type_bytes(format_info(f).scale); }

std::int64_t blocks_per_row(Format f, std::int64_t cols) {
  const FormatInfo& info = format_info(f);
  if (info.scale == ScaleType::none) return 0;
  if (info.block_size == 0) return 1;
  return (cols + info.block_size - 1) / info.block_size;
}

std::int64_t packed_row_bytes(Format f, std::int64_t cols) {
  const FormatInfo& info = format_info(f);
  const std::int64_t padded = info.block_size <= 1 ? cols : blocks_per_row(f, cols) * info.block_size;
  return (padded * element_bits(f) + 7) / 8;
}

double bits_per_value(Format f, std::int64_t row_length) {
  if (row_length <= 0) return nominal_bits_per_value(f);
  const double bits = 8.0 * double(packed_row_bytes(f, row_length) + blocks_per_row(f, row_length) * scale_bytes(f));
  return bits / double(row_length);
}

double nominal_bits_per_value(Format f) {
  const FormatInfo& info = format_info(f);
  const double scale_bits = 8.0 * scale_bytes(f);
  if (info.block_size == 0) return element_bits(f);  // one scale per (long) row
  return element_bits(f) + scale_bits / info.block_size;
}

}  // namespace loraq
