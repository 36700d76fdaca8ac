#include "block_scales.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>

#include "element_codec.hpp"

namespace loraq::detail {

int floor_log2(float a) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(a) & 0x7FFFFFFFu;
  const int exp_field = static_cast<int>(bits >> 23);
  if (exp_field != 0) return exp_field - 127;
  const std::uint32_t mantissa = bits & 0x7FFFFFu;  // subnormal: value = mantissa * 2^-149
  return -149 + (31 - std::countl_zero(mantissa));
}

int mx_shared_exponent(float amax, int element_emax) {
  return std::clamp(floor_log2(amax) - element_emax, -127, 127);
}

namespace {
// Code of the small float nearest to a >= 0 (finite), ties to even, saturating at max: the magic-sum
// rounding of src/core/simd/codec_kernels.hpp in scalar fp32 (a few instructions, where the
// reference codec's exact double arithmetic costs tens of nanoseconds per block).
template <class Codec>
std::uint32_t fast_code(float a, float max_value) {
  constexpr int emin_field = Codec::emin + 127;
  a = std::min(a, 2.0f * max_value);
  const int exponent = std::max(static_cast<int>(std::bit_cast<std::uint32_t>(a) >> 23), emin_field);
  const float magic = std::bit_cast<float>(static_cast<std::uint32_t>(exponent + 23 - Codec::man_bits) << 23);
  const float r = std::min((a + magic) - magic, max_value);
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(r);
  if (bits >= static_cast<std::uint32_t>(emin_field) << 23)
    return (bits >> (23 - Codec::man_bits)) - (static_cast<std::uint32_t>(127 - Codec::bias) << Codec::man_bits);
  return static_cast<std::uint32_t>(r * std::bit_cast<float>(static_cast<std::uint32_t>(127 + Codec::man_bits - Codec::emin) << 23));
}
}  // namespace

std::uint16_t sint4_scale_code(float amax) {
  const float scale = amax / 7.0f;  // fp32 division, then one rounding to fp16
  return static_cast<std::uint16_t>(fast_code<FP16>(scale, 65504.0f));
}

float fp16_value(std::uint16_t code) {  // IEEE binary16 by its bits (the codec's exact double path is slower)
  const std::uint32_t sign = static_cast<std::uint32_t>(code & 0x8000u) << 16;
  const std::uint32_t exponent = (code >> 10) & 0x1Fu, mantissa = code & 0x3FFu;
  if (exponent == 0) return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(float(mantissa) * 0x1p-24f));
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa ? 0x400000u : 0u));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float nvfp4_tensor_scale(float tensor_amax) { return tensor_amax / (448.0f * 6.0f); }

std::uint8_t nvfp4_block_scale_code(float block_amax, float tensor_scale) {
  const float ratio = block_amax / 6.0f / tensor_scale;  // left to right in fp32, as FORMATS.md writes it
  return static_cast<std::uint8_t>(fast_code<E4M3>(ratio, 448.0f));
}

float e4m3_value(std::uint8_t code) {
  static const auto table = [] {  // all 256 values, from the codec once
    std::array<float, 256> t{};
    for (std::uint32_t c = 0; c < 256; ++c) t[c] = E4M3::decode(c);
    return t;
  }();
  return table[code];
}

float finite_amax(std::span<const float> values) {
  float amax = 0.0f;
  const auto n = static_cast<std::int64_t>(values.size());
#pragma omp parallel for reduction(max : amax) schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(values[i]);
    if (std::isfinite(a) && a > amax) amax = a;
  }
  return amax;
}

}  // namespace loraq::detail
