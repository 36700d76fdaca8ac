// Per-block scale rules of FORMATS.md, shared by the scalar reference and the vectorized codecs.
//
// These are out-of-line functions compiled once, without vector-ISA flags, that the vectorized codecs
// call once per block. The scalar reference (block_reference.cpp) derives the fp16 and e4m3 scales
// with the element codec instead, so the bit-identity tests check these fast versions too.
#pragma once

#include <cstdint>
#include <span>

namespace loraq::detail {

// floor(log2(a)) from the fp32 exponent bits (FORMATS.md step 4); subnormal a counts with its true
// exponent. a must be finite and > 0.
int floor_log2(float a);

// MX shared exponent of a block with largest magnitude `amax` > 0 (finite), clamped to [-127, 127].
int mx_shared_exponent(float amax, int element_emax);

// sint4: fp16_round(amax / 7) as an fp16 code (saturating at 65504), and its value. amax finite, >= 0.
std::uint16_t sint4_scale_code(float amax);
float fp16_value(std::uint16_t code);

// nvfp4: the per-tensor fp32 scale amax_tensor / (448 * 6), and the e4m3 code of a block's scale
// amax_block / 6 / global (round to nearest even, saturating at 448); e4m3_value decodes it.
// block_amax finite and >= 0, tensor_scale > 0.
float nvfp4_tensor_scale(float tensor_amax);
std::uint8_t nvfp4_block_scale_code(float block_amax, float tensor_scale);
float e4m3_value(std::uint8_t code);

// Largest magnitude over the finite values of a tensor (0 if none), for nvfp4. Parallel, exact.
float finite_amax(std::span<const float> values);

inline constexpr std::uint8_t kE8m0Nan = 0xFF;
inline constexpr std::uint8_t kE4m3Nan = 0x7F;
inline constexpr std::uint16_t kFp16Nan = 0x7E00;
}  // namespace loraq::detail
