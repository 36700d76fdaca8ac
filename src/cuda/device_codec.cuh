// Block fake quantization on the GPU, bit-identical to the CPU reference (FORMATS.md): the seven MX
// formats and sint4. One warp quantizes one block; each lane holds block_size / 32 values.
//
// The arithmetic is that of src/core/simd/codec_kernels.hpp (the magic-sum rounding, read in its
// header comment) and of block_reference.cpp for sint4, written with explicit _rn intrinsics so that
// nvcc cannot contract or reorder it. tests/cpp/test_cuda.cpp checks the bits on a GPU, and
// tests/cpp/test_cuda_emulated.cpp on the CPU (the SIMT emulation).
#pragma once

#include "cuda/device_prelude.cuh"
#include "loraq/format.hpp"

namespace LORAQ_CUDA_DEVICE_NS {

// The per-format constants the kernels need, passed by value.
struct DeviceFormat {
  int block = 32;       // values per scale: 32 (MX) or 64 (sint4)
  bool sint4 = false;   // fp16 scale amax / 7, integer codes -7..7
  // MX grid: mantissa bits, smallest biased exponent field of a normal, element emax, saturation.
  int man_bits = 0, emin_field = 0, emax = 0;
  float max_value = 0;
  bool is_int = false;  // MXINT: code 0 decodes to +0
  bool away = false;    // Rounding::nearest_away
};

// False for the formats without a device codec (nvfp4's tensor scale, int8_channel's row scale, the
// 16-bit casts): their layers run on the CPU.
inline bool device_format(Format f, Rounding rounding, DeviceFormat& d) {
  d = DeviceFormat{};
  d.away = rounding == Rounding::nearest_away;
  auto mx = [&](int man, int emin_field, int emax, float max_value, bool is_int) {
    d.man_bits = man, d.emin_field = emin_field, d.emax = emax, d.max_value = max_value, d.is_int = is_int;
    return true;
  };
  switch (f) {
    case Format::mxfp8_e4m3: return mx(3, 121, 8, 448.0f, false);
    case Format::mxfp8_e5m2: return mx(2, 113, 15, 57344.0f, false);
    case Format::mxfp6_e2m3: return mx(3, 127, 2, 7.5f, false);
    case Format::mxfp6_e3m2: return mx(2, 125, 4, 28.0f, false);
    case Format::mxfp4: return mx(1, 127, 2, 6.0f, false);
    case Format::mxint8: return mx(7, 128, 0, 127.0f / 64.0f, true);
    case Format::mxint4: return mx(3, 128, 0, 7.0f / 4.0f, true);
    case Format::sint4:
      d.block = 64, d.sint4 = true;
      return true;
    case Format::nvfp4:
    case Format::int8_channel:
    case Format::fp16:
    case Format::bf16:
      return false;
  }
  return false;
}

constexpr int kMaxPerLane = 2;  // 64-value blocks over 32 lanes

__device__ inline float power_of_two(int e) {  // e in [-127, 127]
  return e == -127 ? __uint_as_float(0x00400000u) : __uint_as_float(static_cast<unsigned>(127 + e) << 23);
}

__device__ inline int floor_log2(float a) {
  const unsigned bits = __float_as_uint(a) & 0x7FFFFFFFu;
  const int field = static_cast<int>(bits >> 23);
  if (field != 0) return field - 127;
  return -149 + (31 - __clz(static_cast<int>(bits & 0x7FFFFFu)));
}

__device__ inline float round_to_grid(float a, const DeviceFormat& g) {
  a = fminf(a, 2.0f * g.max_value);
  const int exponent = max(static_cast<int>(__float_as_uint(a) >> 23), g.emin_field);
  const float magic = __uint_as_float(static_cast<unsigned>(exponent + 23 - g.man_bits) << 23);
  float r = __fsub_rn(__fadd_rn(a, magic), magic);
  if (g.away) {
    const float half = __uint_as_float(static_cast<unsigned>(exponent - g.man_bits - 1) << 23);
    if (__fsub_rn(a, r) == half) r = __fadd_rn(r, __fadd_rn(half, half));
  }
  return fminf(r, g.max_value);
}

// Integer formats (sint4, mxint4, mxint8) as the CUDA linear kernels take them: x's code, and the
// block's scale such that code x scale is quantize_in_block's value (the CPU kernels' layout:
// the MX scale times the element's unit). A non-finite block gives code 0 and a NaN scale.
struct IntCode {
  int code;
  float scale;
};
__device__ inline IntCode int_code_in_block(float x, unsigned amax_bits, const DeviceFormat& g) {
  if (amax_bits >= 0x7F800000u) return {0, __uint_as_float(0x7FC00000u)};
  if (amax_bits == 0) return {0, 0.0f};
  if (g.sint4) {
    // FORMATS.md: scale = fp16_round(amax / 7), saturating at 65504; code = clamp(rne(x / scale), -7, 7).
    const float step = __half2float(__float2half_rn(fminf(__fdiv_rn(__uint_as_float(amax_bits), 7.0f), 65504.0f)));
    if (step == 0.0f) return {0, 0.0f};  // amax / 7 below fp16's smallest subnormal: all codes 0
    const float t = __fdiv_rn(x, step);
    int k = min(static_cast<int>(g.away ? roundf(fminf(fabsf(t), 14.0f)) : rintf(fminf(fabsf(t), 14.0f))), 7);
    return {signbit(t) ? -k : k, step};
  }
  const int shared_exp = min(max(floor_log2(__uint_as_float(amax_bits)) - g.emax, -127), 127);
  const float t = __fmul_rn(x, power_of_two(-shared_exp));
  const float r = round_to_grid(fabsf(t), g);                      // a multiple of the unit 2^(1 - man_bits)
  const int k = __float2int_rn(__fmul_rn(r, power_of_two(g.man_bits - 1)));  // exact
  return {signbit(t) ? -k : k, __fmul_rn(power_of_two(shared_exp), power_of_two(1 - g.man_bits))};
}

// What x becomes in a block whose largest magnitude has the bits amax_bits (of |x| as uint: the
// order of non-negative floats, with every NaN and Inf at 0x7F800000 or above).
__device__ inline float quantize_in_block(float x, unsigned amax_bits, const DeviceFormat& g) {
  if (amax_bits >= 0x7F800000u) return __uint_as_float(0x7FC00000u);  // NaN or Inf in the block: the NaN scale
  if (amax_bits == 0) return 0.0f;
  if (g.sint4) {  // the integer code times its scale, in fp32 (code 0 decodes to +0)
    const IntCode c = int_code_in_block(x, amax_bits, g);
    return __fmul_rn(static_cast<float>(c.code), c.scale);
  }
  const int shared_exp = min(max(floor_log2(__uint_as_float(amax_bits)) - g.emax, -127), 127);
  const float t = __fmul_rn(x, power_of_two(-shared_exp));
  const unsigned sign = __float_as_uint(t) & 0x80000000u;
  const float r = round_to_grid(fabsf(t), g);
  float v = __uint_as_float(__float_as_uint(r) | sign);
  if (g.is_int) v = __fadd_rn(v, 0.0f);  // integer code 0 decodes to +0
  return __fmul_rn(v, power_of_two(shared_exp));
}

// The warp's block: lane l holds values l, l + 32 (the second only for 64-value blocks); `count`
// of them are inside the row (the rest are 0 and are not stored). Quantizes x in place.
__device__ inline void quantize_block_warp(float (&x)[kMaxPerLane], const DeviceFormat& g) {
  // Loops of kMaxPerLane with the block's count as a guard: a trip count known at compile time keeps
  // x in registers (unrolled, every index a constant).
  const int per_lane = g.block / 32;
  unsigned amax = 0;
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j)
    if (j < per_lane) amax = max(amax, __float_as_uint(x[j]) & 0x7FFFFFFFu);
  amax = __reduce_max_sync(0xFFFFFFFFu, amax);
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j)
    if (j < per_lane) x[j] = quantize_in_block(x[j], amax, g);
}

}  // namespace LORAQ_CUDA_DEVICE_NS
