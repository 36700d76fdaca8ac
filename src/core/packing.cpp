#include "packing.hpp"

namespace loraq::detail {

void pack_codes(int bits, const std::uint32_t* codes, std::int64_t n, std::uint8_t* out) {
  switch (bits) {
    case 4:
      for (std::int64_t i = 0; i < n; i += 2) out[i / 2] = static_cast<std::uint8_t>((codes[i] & 0xF) | ((codes[i + 1] & 0xF) << 4));
      return;
    case 6:
      for (std::int64_t i = 0; i < n; i += 4) {
        const std::uint32_t word = (codes[i] & 0x3F) | ((codes[i + 1] & 0x3F) << 6) | ((codes[i + 2] & 0x3F) << 12) |
                                   ((codes[i + 3] & 0x3F) << 18);
        std::uint8_t* o = out + (i / 4) * 3;
        o[0] = static_cast<std::uint8_t>(word);
        o[1] = static_cast<std::uint8_t>(word >> 8);
        o[2] = static_cast<std::uint8_t>(word >> 16);
      }
      return;
    case 8:
      for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(codes[i]);
      return;
    case 16:
      for (std::int64_t i = 0; i < n; ++i) {
        out[2 * i] = static_cast<std::uint8_t>(codes[i]);
        out[2 * i + 1] = static_cast<std::uint8_t>(codes[i] >> 8);
      }
      return;
    default: return;  // `bits` is an int, not an enum: every element of the table is 4, 6, 8 or 16 bits
  }
}

void unpack_codes(int bits, const std::uint8_t* in, std::int64_t n, std::uint32_t* codes) {
  switch (bits) {
    case 4:
      for (std::int64_t i = 0; i < n; i += 2) {
        codes[i] = in[i / 2] & 0xF;
        codes[i + 1] = in[i / 2] >> 4;
      }
      return;
    case 6:
      for (std::int64_t i = 0; i < n; i += 4) {
        const std::uint8_t* p = in + (i / 4) * 3;
        const std::uint32_t word = p[0] | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16);
        for (int j = 0; j < 4; ++j) codes[i + j] = (word >> (6 * j)) & 0x3F;
      }
      return;
    case 8:
      for (std::int64_t i = 0; i < n; ++i) codes[i] = in[i];
      return;
    case 16:
      for (std::int64_t i = 0; i < n; ++i) codes[i] = in[2 * i] | (std::uint32_t(in[2 * i + 1]) << 8);
      return;
    default: return;
  }
}

void store_scales(ScaleType type, const std::uint32_t* scale_codes, std::int64_t n, std::uint8_t* out) {
  const int width = scale_type_bytes(type);
  for (std::int64_t i = 0; i < n; ++i)
    for (int b = 0; b < width; ++b) out[i * width + b] = static_cast<std::uint8_t>(scale_codes[i] >> (8 * b));
}

void load_scales(ScaleType type, const std::uint8_t* in, std::int64_t n, std::uint32_t* scale_codes) {
  const int width = scale_type_bytes(type);
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint32_t code = 0;
    for (int b = 0; b < width; ++b) code |= std::uint32_t(in[i * width + b]) << (8 * b);
    scale_codes[i] = code;
  }
}

bool rows_concatenate(Format f, std::int64_t cols) {
  const FormatInfo& info = format_info(f);
  if (info.scale == ScaleType::none) return true;
  return info.block_size > 0 && cols % info.block_size == 0;
}

}  // namespace loraq::detail
