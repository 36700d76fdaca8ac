#include "block_scales.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

#include "element_codec.hpp"
#include "fast_scales.hpp"

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

std::uint16_t sint4_scale_code(float amax) {
  const float scale = amax / 7.0f;  // fp32 division, then one rounding to fp16
  return fast_fp16_code(scale);
}

float fp16_value(std::uint16_t code) { return fast_fp16_value(code); }

float nvfp4_tensor_scale(float tensor_amax) { return tensor_amax / (448.0f * 6.0f); }

std::uint8_t nvfp4_block_scale_code(float block_amax, float tensor_scale) {
  const float ratio = block_amax / 6.0f / tensor_scale;  // left to right in fp32, as FORMATS.md writes it
  return fast_e4m3_code(ratio);
}

float e4m3_value(std::uint8_t code) {
  return code == 0x7F || code == 0xFF ? E4M3::decode(code) : fast_e4m3_value(code);
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
