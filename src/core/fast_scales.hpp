// Small-float rounding of one scale in scalar fp32, by the magic-sum method of
// src/core/simd/codec_kernels.hpp: a handful of instructions where the reference codec's exact
// double arithmetic costs tens of nanoseconds. Used once per block by the vectorized codecs and by
// block_scales.cpp; tests/cpp/test_formats.cpp (FastScales) checks them against the element codec.
//
// Internal linkage on purpose: this header is compiled into the AVX2 and AVX-512 files too, and an
// inline function with external linkage could reach the scalar path as an AVX copy.
#pragma once

#include <cstdint>

namespace {

inline float fast_bits_to_float(std::uint32_t b) { return __builtin_bit_cast(float, b); }
inline std::uint32_t fast_float_to_bits(float f) { return __builtin_bit_cast(std::uint32_t, f); }

// Code of the value of a small float format nearest to a >= 0 (finite), ties to even, saturating at
// max_value. ManBits mantissa bits, smallest normal 2^Emin, exponent bias Bias.
template <int ManBits, int Emin, int Bias>
inline std::uint32_t fast_small_float_code(float a, float max_value) {
  constexpr int emin_field = Emin + 127;
  a = a < 2.0f * max_value ? a : 2.0f * max_value;
  int exponent = static_cast<int>(fast_float_to_bits(a) >> 23);
  exponent = exponent > emin_field ? exponent : emin_field;
  const float magic = fast_bits_to_float(static_cast<std::uint32_t>(exponent + 23 - ManBits) << 23);
  float r = (a + magic) - magic;
  r = r < max_value ? r : max_value;
  const std::uint32_t bits = fast_float_to_bits(r);
  if (bits >= static_cast<std::uint32_t>(emin_field) << 23)
    return (bits >> (23 - ManBits)) - (static_cast<std::uint32_t>(127 - Bias) << ManBits);
  return static_cast<std::uint32_t>(r * fast_bits_to_float(static_cast<std::uint32_t>(127 + ManBits - Emin) << 23));
}

// fp16 (IEEE binary16) of a >= 0, saturating at 65504; and the value of an fp16 code.
inline std::uint16_t fast_fp16_code(float a) {
  return static_cast<std::uint16_t>(fast_small_float_code<10, -14, 15>(a, 65504.0f));
}
inline float fast_fp16_value(std::uint16_t code) {
  const std::uint32_t sign = static_cast<std::uint32_t>(code & 0x8000u) << 16;
  const std::uint32_t exponent = (code >> 10) & 0x1Fu, mantissa = code & 0x3FFu;
  if (exponent == 0) return fast_bits_to_float(sign | fast_float_to_bits(float(mantissa) * 0x1p-24f));
  if (exponent == 31) return fast_bits_to_float(sign | 0x7F800000u | (mantissa ? 0x400000u : 0u));
  return fast_bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// e4m3 ("fn": max 448) of a >= 0; and the value of a non-NaN e4m3 code.
inline std::uint8_t fast_e4m3_code(float a) {
  return static_cast<std::uint8_t>(fast_small_float_code<3, -6, 7>(a, 448.0f));
}
inline float fast_e4m3_value(std::uint8_t code) {
  const std::uint32_t sign = static_cast<std::uint32_t>(code & 0x80u) << 24;
  const std::uint32_t exponent = (code >> 3) & 0xFu, mantissa = code & 0x7u;
  if (exponent == 0) return fast_bits_to_float(sign | fast_float_to_bits(float(mantissa) * 0x1p-9f));
  return fast_bits_to_float(sign | ((exponent + 120) << 23) | (mantissa << 20));
}

}  // namespace
