// The safetensors dtypes: one table (name, bits, float or not), checked size arithmetic, and the
// float32 conversions, which go through the project's element codec for f16 and bf16 so that files
// and quantizers agree on rounding (nearest even) and saturation.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "loraq/element.hpp"
#include "loraq/error.hpp"
#include "loraq/io.hpp"
#include "core/fast_scales.hpp"

namespace loraq::io {
namespace {

// Every file format we read stores little-endian numbers; reading them by memcpy needs a
// little-endian host, which every target of this project is.
static_assert(std::endian::native == std::endian::little, "loraq::io assumes a little-endian host");

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  std::size_t bits;
  bool is_float;  // converted by to_float32 / from_float32
};

// The one switch over DType: -Wswitch flags a new value that is not described here.
constexpr DTypeInfo describe(DType d) {
  switch (d) {
    case DType::boolean: return {d, "BOOL", 8, false};
    case DType::f4: return {d, "F4", 4, false};
    case DType::f6_e2m3: return {d, "F6_E2M3", 6, false};
    case DType::f6_e3m2: return {d, "F6_E3M2", 6, false};
    case DType::u8: return {d, "U8", 8, false};
    case DType::i8: return {d, "I8", 8, false};
    case DType::f8_e5m2: return {d, "F8_E5M2", 8, false};
    case DType::f8_e4m3: return {d, "F8_E4M3", 8, false};
    case DType::f8_e8m0: return {d, "F8_E8M0", 8, false};
    case DType::f8_e4m3fnuz: return {d, "F8_E4M3FNUZ", 8, false};
    case DType::f8_e5m2fnuz: return {d, "F8_E5M2FNUZ", 8, false};
    case DType::i16: return {d, "I16", 16, false};
    case DType::u16: return {d, "U16", 16, false};
    case DType::f16: return {d, "F16", 16, true};
    case DType::bf16: return {d, "BF16", 16, true};
    case DType::i32: return {d, "I32", 32, false};
    case DType::u32: return {d, "U32", 32, false};
    case DType::f32: return {d, "F32", 32, true};
    case DType::c64: return {d, "C64", 64, false};
    case DType::f64: return {d, "F64", 64, true};
    case DType::i64: return {d, "I64", 64, false};
    case DType::u64: return {d, "U64", 64, false};
  }
  return {d, "?", 0, false};  // not a DType value; -Wswitch guards the list above
}

constexpr std::array<DTypeInfo, kDTypeCount> make_table() {
  std::array<DTypeInfo, kDTypeCount> table{};
  for (int i = 0; i < kDTypeCount; ++i) table[static_cast<std::size_t>(i)] = describe(static_cast<DType>(i));
  return table;
}
constexpr std::array<DTypeInfo, kDTypeCount> kTable = make_table();

constexpr bool table_is_complete() {
  for (const DTypeInfo& info : kTable)
    if (info.bits == 0) return false;
  return describe(static_cast<DType>(kDTypeCount)).bits == 0;  // kDTypeCount is one past the last
}
static_assert(table_is_complete(), "kDTypeCount must equal the number of DType values");

const DTypeInfo& info_of(DType d) {
  const auto i = static_cast<std::size_t>(d);
  if (i >= kTable.size()) throw Error(fmt::format("invalid DType value {}", i));
  return kTable[i];
}

constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 62;

void check_sizes(DType d, std::size_t byte_count, std::size_t count, const char* direction) {
  const std::size_t size = dtype_size(d);
  if (byte_count / size != count || byte_count % size != 0)
    throw Error(fmt::format("{}: {} bytes of {} do not hold {} elements ({} bytes expected)", direction,
                            byte_count, dtype_name(d), count, count * size));
}

// All 65536 values of a 16-bit float, decoded once by the element codec: decoding a checkpoint is
// then a table lookup, and still exactly what the codec defines (NaN codes give a quiet NaN).
const std::array<float, 65536>& decode_table(Element e) {
  static const auto build = [](Element element) {
    std::array<float, 65536> table{};
    for (std::uint32_t code = 0; code < 65536; ++code) table[code] = decode(element, code);
    return table;
  };
  static const std::array<float, 65536> fp16 = build(Element::fp16);
  static const std::array<float, 65536> bf16 = build(Element::bf16);
  return e == Element::fp16 ? fp16 : bf16;
}

void decode16(Element e, std::span<const std::byte> bytes, std::span<float> out) {
  const std::array<float, 65536>& table = decode_table(e);
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::uint16_t code;
    std::memcpy(&code, bytes.data() + 2 * i, 2);
    out[i] = table[code];
  }
}

// The element codec's fp16 / bf16 encoding (round to nearest even, saturating, NaN to the canonical
// quiet NaN) by bit arithmetic: the codec's exact double path is too slow for whole checkpoints.
// tests/cpp/test_io.cpp (FastHalfConversions) checks both against the codec.
std::uint16_t bf16_bits(float x) {
  const std::uint32_t b = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t sign = (b >> 16) & 0x8000u;
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;   // NaN
  if ((b & 0x7FFFFFFFu) == 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7F80u);  // Inf
  const std::uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;  // ties to even on the kept bits
  if ((rounded & 0x7F80u) == 0x7F80u) return static_cast<std::uint16_t>(sign | 0x7F7Fu);  // overflow: saturate
  return static_cast<std::uint16_t>(rounded);
}

std::uint16_t fp16_bits(float x) {
  const std::uint32_t b = std::bit_cast<std::uint32_t>(x);
  const auto sign = static_cast<std::uint16_t>((b >> 16) & 0x8000u);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0x7E00;   // NaN
  if ((b & 0x7FFFFFFFu) == 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // Inf
  return static_cast<std::uint16_t>(sign | fast_fp16_code(std::fabs(x)));
}

void encode16(Element e, std::span<const float> in, std::span<std::byte> out) {
  for (std::size_t i = 0; i < in.size(); ++i) {
    const std::uint16_t code = e == Element::bf16 ? bf16_bits(in[i]) : fp16_bits(in[i]);
    std::memcpy(out.data() + 2 * i, &code, 2);
  }
}

}  // namespace

std::string_view dtype_name(DType d) { return info_of(d).name; }

std::size_t dtype_bits(DType d) { return info_of(d).bits; }

std::size_t dtype_size(DType d) {
  const DTypeInfo& info = info_of(d);
  if (info.bits % 8 != 0)
    throw Error(fmt::format("dtype {} has {}-bit elements: it has no per-element byte size (use byte_size)",
                            info.name, info.bits));
  return info.bits / 8;
}

DType parse_dtype(std::string_view safetensors_name) {
  for (const DTypeInfo& info : kTable)
    if (info.name == safetensors_name) return info.dtype;
  std::string known;
  for (const DTypeInfo& info : kTable) known += fmt::format("{}{}", known.empty() ? "" : ", ", info.name);
  throw Error(fmt::format("unknown dtype \"{}\" (expected one of {})", safetensors_name, known));
}

bool is_float_dtype(DType d) { return info_of(d).is_float; }

std::uint64_t element_count(std::span<const std::int64_t> shape, std::string_view what) {
  for (std::size_t i = 0; i < shape.size(); ++i)
    if (shape[i] < 0)
      throw Error(fmt::format("{}: dimension {} is {}, expected a non-negative size", what, i, shape[i]));
  // A zero anywhere makes the count 0, whatever the other dimensions are.
  if (std::find(shape.begin(), shape.end(), std::int64_t{0}) != shape.end()) return 0;
  std::uint64_t count = 1;
  for (const std::int64_t dim : shape) {
    const auto d = static_cast<std::uint64_t>(dim);
    if (d > kMaxElements / count)  // count * d > 2^62, tested without overflowing
      throw Error(fmt::format("{}: shape has more than 2^62 elements", what));
    count *= d;
  }
  return count;
}

std::uint64_t byte_size(DType d, std::uint64_t count, std::string_view what) {
  const std::uint64_t bits = dtype_bits(d);
  if (count > kMaxElements) throw Error(fmt::format("{}: more than 2^62 elements", what));
  // Eight elements take exactly `bits` bytes; counting in groups of eight keeps the arithmetic in
  // 64 bits, and the check below keeps the sum from wrapping (2^62 U64 elements are 2^65 bytes).
  const std::uint64_t groups = count / 8;
  const std::uint64_t rest_bits = (count % 8) * bits;  // < 512
  if (groups > (std::numeric_limits<std::uint64_t>::max() - 64) / bits)
    throw Error(fmt::format("{}: {} elements of {} overflow a 64-bit byte count", what, count, dtype_name(d)));
  if (rest_bits % 8 != 0)
    throw Error(fmt::format("{}: {} elements of {} ({} bits each) do not fill a whole number of bytes", what,
                            count, dtype_name(d), bits));
  return groups * bits + rest_bits / 8;
}

void to_float32(DType d, std::span<const std::byte> bytes, std::span<float> out) {
  switch (d) {
    case DType::f32:
      check_sizes(d, bytes.size(), out.size(), "to_float32");
      if (!out.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
      return;
    case DType::f16:
      check_sizes(d, bytes.size(), out.size(), "to_float32");
      decode16(Element::fp16, bytes, out);
      return;
    case DType::bf16:
      check_sizes(d, bytes.size(), out.size(), "to_float32");
      decode16(Element::bf16, bytes, out);
      return;
    case DType::f64:
      check_sizes(d, bytes.size(), out.size(), "to_float32");
      for (std::size_t i = 0; i < out.size(); ++i) {
        double x;
        std::memcpy(&x, bytes.data() + 8 * i, 8);
        // Round to nearest by the cast; finite values beyond float's range saturate (the codecs'
        // MX convention) instead of becoming Inf. Inf and NaN pass through the cast.
        constexpr double kMax = std::numeric_limits<float>::max();
        if (std::isfinite(x) && std::fabs(x) > kMax)
          out[i] = std::copysign(std::numeric_limits<float>::max(), static_cast<float>(x));
        else
          out[i] = static_cast<float>(x);
      }
      return;
    case DType::boolean: case DType::f4: case DType::f6_e2m3: case DType::f6_e3m2: case DType::u8:
    case DType::i8: case DType::f8_e5m2: case DType::f8_e4m3: case DType::f8_e8m0:
    case DType::f8_e4m3fnuz: case DType::f8_e5m2fnuz: case DType::i16: case DType::u16:
    case DType::i32: case DType::u32: case DType::c64: case DType::i64: case DType::u64:
      break;
  }
  throw Error(fmt::format("to_float32: dtype {} is not a float dtype (expected F16, BF16, F32 or F64)",
                          dtype_name(d)));
}

void from_float32(DType d, std::span<const float> in, std::span<std::byte> out) {
  switch (d) {
    case DType::f32:
      check_sizes(d, out.size(), in.size(), "from_float32");
      if (!in.empty()) std::memcpy(out.data(), in.data(), out.size());
      return;
    case DType::f16:
      check_sizes(d, out.size(), in.size(), "from_float32");
      encode16(Element::fp16, in, out);
      return;
    case DType::bf16:
      check_sizes(d, out.size(), in.size(), "from_float32");
      encode16(Element::bf16, in, out);
      return;
    case DType::f64:
      check_sizes(d, out.size(), in.size(), "from_float32");
      for (std::size_t i = 0; i < in.size(); ++i) {
        const double x = in[i];  // exact
        std::memcpy(out.data() + 8 * i, &x, 8);
      }
      return;
    case DType::boolean: case DType::f4: case DType::f6_e2m3: case DType::f6_e3m2: case DType::u8:
    case DType::i8: case DType::f8_e5m2: case DType::f8_e4m3: case DType::f8_e8m0:
    case DType::f8_e4m3fnuz: case DType::f8_e5m2fnuz: case DType::i16: case DType::u16:
    case DType::i32: case DType::u32: case DType::c64: case DType::i64: case DType::u64:
      break;
  }
  throw Error(fmt::format("from_float32: dtype {} is not a float dtype (expected F16, BF16, F32 or F64)",
                          dtype_name(d)));
}

void require_finite(std::span<const float> values, std::span<const std::int64_t> shape, std::string_view file,
                    std::string_view tensor, std::string_view what) {
  // An exponent of all ones is Inf or NaN. The largest exponent field over the tensor is a max
  // reduction that vectorizes; the index is only searched for when there is something to report.
  std::uint32_t max_exponent = 0;
  for (const float v : values) max_exponent = std::max(max_exponent, std::bit_cast<std::uint32_t>(v) & 0x7F800000u);
  if (max_exponent != 0x7F800000u) return;
  const auto bad = std::find_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); });
  // The position as indices along the shape ([row, col] for a weight); the flat index when the
  // shape does not describe the values.
  std::uint64_t flat = std::uint64_t(bad - values.begin()), product = 1;
  for (const std::int64_t d : shape) product *= std::uint64_t(d);
  std::string where = fmt::format("flat index {}", flat);
  if (!shape.empty() && product == values.size()) {
    std::vector<std::uint64_t> index(shape.size());
    for (std::size_t i = shape.size(); i-- > 0;) index[i] = flat % std::uint64_t(shape[i]), flat /= std::uint64_t(shape[i]);
    where = fmt::format("[{}]", fmt::join(index, ", "));
  }
  const std::string named = tensor.empty() ? std::string() : fmt::format("tensor '{}' ", tensor);
  throw Error(fmt::format("{}: {}holds {} at {}: loraq refuses non-finite {}", file, named,
                          std::isnan(*bad) ? "NaN" : "Inf", where, what));
}

}  // namespace loraq::io
