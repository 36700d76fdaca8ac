// Bit packing of element codes and byte layout of scales (FORMATS.md "Packed storage").
#pragma once

#include <cstdint>

#include "loraq/format.hpp"

namespace loraq::detail {

// 4-bit: two codes a byte, code 2i in the low nibble. 6-bit: four codes in three bytes, code j in
// bits 6j..6j+5 of the little-endian 24-bit word. 8-bit: a byte each. 16-bit: little-endian pairs.
// n is a multiple of the packing group (2 for 4-bit, 4 for 6-bit).
void pack_codes(int bits, const std::uint32_t* codes, std::int64_t n, std::uint8_t* out);
void unpack_codes(int bits, const std::uint8_t* in, std::int64_t n, std::uint32_t* codes);

// Scale codes (e8m0 and e4m3: 1 byte; fp16: 2 bytes; fp32 bits: 4 bytes, little-endian).
void store_scales(ScaleType type, const std::uint32_t* scale_codes, std::int64_t n, std::uint8_t* out);
void load_scales(ScaleType type, const std::uint8_t* in, std::int64_t n, std::uint32_t* scale_codes);

// Whether rows of `cols` values can be coded as one long row: every block ends where a row ends and
// nothing is per row (int8_channel's scale), so the blocks, codes and scales of consecutive rows are
// laid out exactly as in one row of their total length. The codec dispatcher and the integer
// kernels' activation quantization then call a row kernel once for many rows (the vector codecs
// work on groups of blocks, which would otherwise restart on every row).
bool rows_concatenate(Format f, std::int64_t cols);

}  // namespace loraq::detail
