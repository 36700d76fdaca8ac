// The scalar reference codec of every block format: the definition of FORMATS.md in code.
//
// A row is encoded into one 32-bit code per value (rows padded to whole blocks with code 0) and one
// scale code per block; packing.cpp turns those into the documented byte layout. Everything else
// (the vectorized codecs, the CUDA codec) is tested bit for bit against these functions.
#pragma once

#include <cstdint>

#include "loraq/format.hpp"

namespace loraq::detail {

// Codes of a row of `cols` values. `codes` has room for the padded row, `scale_codes` one per block
// (for int8_channel the fp32 scale's bits, for sint4 the fp16 code). tensor_scale: nvfp4's fp32.
void reference_encode_row(Format f, const float* row, std::int64_t cols, float tensor_scale, Rounding rounding,
                          std::uint32_t* codes, std::uint32_t* scale_codes);

// Values of a row from its codes.
void reference_decode_row(Format f, const std::uint32_t* codes, const std::uint32_t* scale_codes,
                          float tensor_scale, std::int64_t cols, float* out);

// Padded number of codes of a row.
std::int64_t padded_cols(Format f, std::int64_t cols);

}  // namespace loraq::detail
