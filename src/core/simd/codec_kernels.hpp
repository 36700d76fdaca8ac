// The vectorized codecs, written once over a vector-ops type V (VecAvx2, VecAvx512).
//
// Rounding to an element grid without a table or a log: for a magnitude a whose grid step is
// 2^k, (a + 2^(k+23)) - 2^(k+23) rounds a to a multiple of 2^k with the FPU's ties-to-even, exactly
// (the sum lies in the binade of 2^(k+23), whose fp32 step is 2^k). k comes from a's exponent bits,
// clamped below at the element's smallest normal exponent (the subnormal step). Ties away from zero
// add one step where the even rounding went down by exactly half a step. Codes are then read off the
// rounded value's fp32 bits (normal) or as an integer multiple of the subnormal step.
//
// Included only by codec_avx2.cpp / codec_avx512.cpp, inside their anonymous namespace: nothing here
// may have external linkage, or the linker could hand an AVX copy to the scalar path.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../block_scales.hpp"
#include "../element_codec.hpp"  // constexpr element parameters only: no codec function is called here
#include "../fast_scales.hpp"
#include "vector_kernels.hpp"

namespace {

using loraq::Format;
using loraq::Rounding;
namespace detail = loraq::detail;

// An element grid as the vector code sees it.
struct Grid {
  int man_bits;    // grid points per binade = 2^man_bits
  int emin_field;  // biased fp32 exponent of the smallest normal (all values of integer grids are below it)
  int bias;        // the element's own exponent bias (floats)
  int bits;        // code width
  float max_value;
  bool is_int;  // two's complement codes (MX int, sint4, int8)
  int emax;     // exponent of the largest binade (FORMATS.md emax_elem)
};

template <class C>
constexpr Grid float_grid(float max_value) {
  return {C::man_bits, C::emin + 127, C::bias, C::bits, max_value, false, C::emax};
}
constexpr Grid kE2M1 = float_grid<detail::E2M1>(6.0f);
constexpr Grid kE2M3 = float_grid<detail::E2M3>(7.5f);
constexpr Grid kE3M2 = float_grid<detail::E3M2>(28.0f);
constexpr Grid kE4M3 = float_grid<detail::E4M3>(448.0f);
constexpr Grid kE5M2 = float_grid<detail::E5M2>(57344.0f);
// int grids: step 2^-frac = 2^((emin_field-127) - man_bits). mx_int8: step 2^-6, values < 2 = 2^1.
constexpr Grid kMxInt8 = {7, 128, 0, 8, 127.0f / 64.0f, true, detail::MxInt8::emax};
constexpr Grid kMxInt4 = {3, 128, 0, 4, 7.0f / 4.0f, true, detail::MxInt4::emax};
constexpr Grid kInt4 = {3, 130, 0, 4, 7.0f, true, detail::Int4::emax};    // step 1 = 2^(3 - 3), values < 8
constexpr Grid kInt8 = {7, 134, 0, 8, 127.0f, true, detail::Int8::emax};  // step 1 = 2^(7 - 7), values < 128

template <class V>
struct GridRounder {
  using F = typename V::F;
  using I = typename V::I;

  Grid grid;
  bool away;
  I emin_field, magic_shift, half_shift, normal_min_bits, rebias, sign_mask, code_mask;
  F max_value, clamp_value, to_subnormal_code;

  GridRounder(const Grid& g, Rounding rounding)
      : grid(g),
        away(rounding == Rounding::nearest_away),
        emin_field(V::set_i(g.emin_field)),
        magic_shift(V::set_i(23 - g.man_bits)),
        half_shift(V::set_i(g.man_bits + 1)),
        normal_min_bits(V::set_i((g.emin_field << 23) - 1)),
        rebias(V::set_i((127 - g.bias) << g.man_bits)),
        sign_mask(V::set_i(static_cast<std::int32_t>(0x80000000u))),
        code_mask(V::set_i((1 << g.bits) - 1)),
        max_value(V::set_f(g.max_value)),
        clamp_value(V::set_f(2.0f * g.max_value)),
        to_subnormal_code(V::set_f(__builtin_bit_cast(float, std::uint32_t(127 + g.man_bits - (g.emin_field - 127)) << 23))) {}

  // Rounded magnitude of a >= 0 (finite), saturated at the grid's max.
  F round(F a) const {
    a = V::min_f(a, clamp_value);  // beyond 2 max everything saturates; keeps the magic sum finite
    const I exponent = V::max_i(V::shr(V::bits(a), 23), emin_field);
    const F magic = V::flt(V::shl(V::add_i(exponent, magic_shift), 23));
    F r = V::sub(V::add(a, magic), magic);
    if (away) {
      const F half = V::flt(V::shl(V::sub_i(exponent, half_shift), 23));
      r = V::select_f(V::eq_f(V::sub(a, r), half), V::add(r, V::add(half, half)), r);
    }
    return V::min_f(r, max_value);
  }

  // Element code of a rounded magnitude r with the sign bits of the original value.
  I code(F r, I sign) const {
    const I subnormal = V::cvtt(V::mul(r, to_subnormal_code));
    if (grid.is_int) {
      const typename V::M negative = V::gt_i(V::set_i(0), sign);  // sign bit set
      return V::select_i(negative, V::and_i(V::sub_i(V::set_i(0), subnormal), code_mask), subnormal);
    }
    const I rb = V::bits(r);
    const I normal = V::sub_i(V::shr(rb, 23 - grid.man_bits), rebias);
    const I magnitude = V::select_i(V::gt_i(rb, normal_min_bits), normal, subnormal);
    return V::or_i(magnitude, V::shr(sign, 32 - grid.bits));
  }

  // The value of r with its sign; integer grids give +0 for a zero code, as decoding k = 0 does.
  F signed_value(F r, I sign) const {
    const F v = V::flt(V::or_i(V::bits(r), sign));
    return grid.is_int ? V::add(v, V::set_f(0.0f)) : v;
  }
};

struct BlockStats {
  float amax;
  bool finite;
};

template <class V>
BlockStats block_stats(const float* x, std::int64_t n) {  // n: a multiple of V::W
  typename V::I m = V::set_i(0);
  const typename V::I abs_mask = V::set_i(0x7FFFFFFF);
  for (std::int64_t i = 0; i < n; i += V::W) m = V::max_i(m, V::and_i(V::bits(V::load(x + i)), abs_mask));
  const std::int32_t amax_bits = V::hmax_i(m);  // non-negative float bits order like the floats
  return {__builtin_bit_cast(float, amax_bits), amax_bits < 0x7F800000};
}

// Where a block's codes go: packed bytes (pack) or nowhere (fake quantization).
void store_codes_6bit(const std::int32_t* codes, int n, std::uint8_t* dst) {
  for (int i = 0; i < n; i += 4) {
    const std::uint32_t word = std::uint32_t(codes[i] & 0x3F) | (std::uint32_t(codes[i + 1] & 0x3F) << 6) |
                               (std::uint32_t(codes[i + 2] & 0x3F) << 12) | (std::uint32_t(codes[i + 3] & 0x3F) << 18);
    dst[i / 4 * 3] = std::uint8_t(word);
    dst[i / 4 * 3 + 1] = std::uint8_t(word >> 8);
    dst[i / 4 * 3 + 2] = std::uint8_t(word >> 16);
  }
}

template <class V>
void store_code_vector(typename V::I code, int bits, std::uint8_t* dst) {  // dst: this vector's first byte
  if (bits == 8) {
    V::store_bytes(code, dst);
  } else if (bits == 4) {
    V::store_nibbles(code, dst);
  } else {  // 6-bit: through a small buffer; only the mxfp6 formats take this path
    alignas(64) std::int32_t lanes[V::W];
    V::store_i32(lanes, code);
    store_codes_6bit(lanes, V::W, dst);
  }
}

// One block of `n` values (n a multiple of V::W) quantized on grid g with one scale: value x maps to
// the grid point of x * inv_scale (or x / divisor), and back by * scale. Writes values and/or codes.
enum class Scaling { multiply_exact, divide };

template <class V>
void quantize_block(const GridRounder<V>& rounder, const float* x, std::int64_t n, Scaling scaling, float to_grid,
                    float scale, float* values, std::uint8_t* codes) {
  using F = typename V::F;
  const F to_grid_v = V::set_f(to_grid);
  const F scale_v = V::set_f(scale);
  const int bits = rounder.grid.bits;
  for (std::int64_t i = 0; i < n; i += V::W) {
    const F xv = V::load(x + i);
    const F t = scaling == Scaling::multiply_exact ? V::mul(xv, to_grid_v) : V::div(xv, to_grid_v);
    const typename V::I sign = V::and_i(V::bits(t), rounder.sign_mask);
    const F r = rounder.round(V::flt(V::and_i(V::bits(t), V::set_i(0x7FFFFFFF))));
    if (values) V::store(values + i, V::mul(rounder.signed_value(r, sign), scale_v));
    if (codes) store_code_vector<V>(rounder.code(r, sign), bits, codes + i * bits / 8);
  }
}

void fill_block(float* values, std::uint8_t* codes, std::int64_t n, int bits, float value) {
  if (values)
    for (std::int64_t i = 0; i < n; ++i) values[i] = value;
  if (codes) std::memset(codes, 0, std::size_t(n * bits / 8));
}

constexpr float kNan = __builtin_nanf("");

const Grid* mx_grid(Format f) {
  switch (f) {
    case Format::mxfp8_e4m3: return &kE4M3;
    case Format::mxfp8_e5m2: return &kE5M2;
    case Format::mxfp6_e2m3: return &kE2M3;
    case Format::mxfp6_e3m2: return &kE3M2;
    case Format::mxfp4: return &kE2M1;
    case Format::mxint8: return &kMxInt8;
    case Format::mxint4: return &kMxInt4;
    case Format::sint4: return nullptr;
    case Format::nvfp4: return nullptr;
    case Format::int8_channel: return nullptr;
    case Format::fp16: return nullptr;
    case Format::bf16: return nullptr;
  }
  return nullptr;
}

// 2^e for e in [-127, 127] (2^-127 is an fp32 subnormal).
float power_of_two(int e) {
  return e == -127 ? __builtin_bit_cast(float, 0x00400000u) : __builtin_bit_cast(float, std::uint32_t(127 + e) << 23);
}

int grid_emax(const Grid& g) { return g.emax; }

// The scale of one block (FORMATS.md), computed by block_scales.cpp, then its elements.
template <class V>
void quantize_scaled(Format f, const GridRounder<V>& rounder, const float* x, std::int64_t n, BlockStats s,
                     float tensor_scale, float* values, std::uint8_t* codes, std::uint8_t* scale_out) {
  const int bits = rounder.grid.bits;
  switch (loraq::format_info(f).scale) {
    case loraq::ScaleType::e8m0: {
      std::uint8_t scale_code = 0;
      if (!s.finite) {
        scale_code = detail::kE8m0Nan;
        fill_block(values, codes, n, bits, kNan);
      } else if (s.amax == 0.0f) {
        fill_block(values, codes, n, bits, 0.0f);
      } else {
        const int shared_exp = detail::mx_shared_exponent(s.amax, grid_emax(rounder.grid));
        scale_code = std::uint8_t(shared_exp + 127);
        quantize_block<V>(rounder, x, n, Scaling::multiply_exact, power_of_two(-shared_exp), power_of_two(shared_exp),
                          values, codes);
      }
      if (scale_out) scale_out[0] = scale_code;
      return;
    }
    case loraq::ScaleType::fp16: {
      std::uint16_t scale_code = detail::kFp16Nan;
      if (s.finite) {
        scale_code = detail::sint4_scale_code(s.amax);
        const float step = detail::fp16_value(scale_code);
        if (step == 0.0f) fill_block(values, codes, n, bits, 0.0f);
        else quantize_block<V>(rounder, x, n, Scaling::divide, step, step, values, codes);
      } else {
        fill_block(values, codes, n, bits, kNan);
      }
      if (scale_out) scale_out[0] = std::uint8_t(scale_code), scale_out[1] = std::uint8_t(scale_code >> 8);
      return;
    }
    case loraq::ScaleType::e4m3: {
      std::uint8_t scale_code = detail::kE4m3Nan;
      if (!s.finite) {
        fill_block(values, codes, n, bits, kNan);
      } else if (tensor_scale == 0.0f) {
        scale_code = 0;
        fill_block(values, codes, n, bits, 0.0f);
      } else {
        scale_code = detail::nvfp4_block_scale_code(s.amax, tensor_scale);
        const float block_scale = detail::e4m3_value(scale_code);
        const float divisor = block_scale * tensor_scale;
        if (divisor == 0.0f) {
          fill_block(values, codes, n, bits, 0.0f);
        } else {
          // value = element * block_scale * global, left to right, as the reference computes it.
          quantize_block<V>(rounder, x, n, Scaling::divide, divisor, block_scale, values, codes);
          if (values)
            for (std::int64_t i = 0; i < n; i += V::W) V::store(values + i, V::mul(V::load(values + i), V::set_f(tensor_scale)));
        }
      }
      if (scale_out) scale_out[0] = scale_code;
      return;
    }
    case loraq::ScaleType::fp32: {
      float step = kNan;
      if (s.finite) {
        step = s.amax / 127.0f;
        if (step == 0.0f) fill_block(values, codes, n, bits, 0.0f);
        else quantize_block<V>(rounder, x, n, Scaling::divide, step, step, values, codes);
      } else {
        fill_block(values, codes, n, bits, kNan);
      }
      if (scale_out) std::memcpy(scale_out, &step, 4);
      return;
    }
    case loraq::ScaleType::none: return;  // fp16 / bf16 are not vectorized (supports() says so)
  }
}

const Grid& grid_of(Format f) {
  if (const Grid* mx = mx_grid(f)) return *mx;
  return f == Format::sint4 ? kInt4 : f == Format::nvfp4 ? kE2M1 : kInt8;
}

// A row of a format with blocks of at most kMaxBlock values. The last block may be partial: it is
// quantized in a zero-padded copy (zeros change neither its amax nor its other codes), and packed
// rows have room for the padded block, whose padding codes are 0 as the reference's are.
constexpr int kMaxBlock = 64;

template <class V>
void quantize_block_row(Format f, const float* in, float* out, std::int64_t cols, float tensor_scale,
                        Rounding rounding, std::uint8_t* codes, std::uint8_t* scales) {
  const GridRounder<V> rounder(grid_of(f), rounding);
  const std::int64_t block = loraq::format_info(f).block_size;
  const int bits = rounder.grid.bits;
  const int scale_width = loraq::scale_bytes(f);
  alignas(64) float padded_in[kMaxBlock];
  alignas(64) float padded_out[kMaxBlock];
  for (std::int64_t start = 0, b = 0; start < cols; start += block, ++b) {
    const std::int64_t n = cols - start < block ? cols - start : block;
    const float* x = in + start;
    float* values = out ? out + start : nullptr;
    if (n < block) {
      std::memcpy(padded_in, x, std::size_t(n) * sizeof(float));
      std::memset(padded_in + n, 0, std::size_t(block - n) * sizeof(float));
      x = padded_in;
      if (values) values = padded_out;
    }
    quantize_scaled<V>(f, rounder, x, block, block_stats<V>(x, block), tensor_scale, values,
                       codes ? codes + start * bits / 8 : nullptr, scales ? scales + b * scale_width : nullptr);
    if (n < block && out) std::memcpy(out + start, padded_out, std::size_t(n) * sizeof(float));
  }
}

// int8_channel: one scale for the whole row; the tail beyond the last whole vector is quantized in
// a padded copy and only its n values / n code bytes are kept (packed int8 rows are not padded).
template <class V>
void quantize_channel_row(Format f, const float* in, float* out, std::int64_t cols, Rounding rounding,
                          std::uint8_t* codes, std::uint8_t* scales) {
  const GridRounder<V> rounder(grid_of(f), rounding);
  const std::int64_t whole = cols / V::W * V::W;
  const std::int64_t tail = cols - whole;
  alignas(64) float padded_in[V::W] = {};
  alignas(64) float padded_out[V::W];
  alignas(64) std::uint8_t padded_codes[V::W];
  std::memcpy(padded_in, in + whole, std::size_t(tail) * sizeof(float));
  BlockStats s = block_stats<V>(in, whole);
  const BlockStats t = block_stats<V>(padded_in, V::W);
  s = {s.amax > t.amax ? s.amax : t.amax, s.finite && t.finite};
  std::uint8_t scale_bytes[4];
  quantize_scaled<V>(f, rounder, in, whole, s, 1.0f, out, codes, scale_bytes);
  if (tail > 0) {
    quantize_scaled<V>(f, rounder, padded_in, V::W, s, 1.0f, out ? padded_out : nullptr, codes ? padded_codes : nullptr,
                       nullptr);
    if (out) std::memcpy(out + whole, padded_out, std::size_t(tail) * sizeof(float));
    if (codes) std::memcpy(codes + whole, padded_codes, std::size_t(tail));
  }
  if (scales) std::memcpy(scales, scale_bytes, 4);
}


// ---------------------------------------------------------------- the fast path
// Whole blocks whose scale is ordinary (finite, non-zero, not clamped) take this path, with the
// format, the rounding mode and pack-or-values known at compile time: no branch per vector, shift
// counts as immediates, the scale computed inline from the amax bits. Every other block (and the
// partial last one) goes through the general path above, so both paths meet in the bit-identity
// tests (tests/cpp/test_simd.cpp draws zero, non-finite, tiny and huge blocks on purpose).

template <Format Fmt>
constexpr Grid grid_for() {
  if constexpr (Fmt == Format::mxfp8_e4m3) return kE4M3;
  else if constexpr (Fmt == Format::mxfp8_e5m2) return kE5M2;
  else if constexpr (Fmt == Format::mxfp6_e2m3) return kE2M3;
  else if constexpr (Fmt == Format::mxfp6_e3m2) return kE3M2;
  else if constexpr (Fmt == Format::mxfp4 || Fmt == Format::nvfp4) return kE2M1;
  else if constexpr (Fmt == Format::mxint8) return kMxInt8;
  else if constexpr (Fmt == Format::mxint4) return kMxInt4;
  else return kInt4;  // sint4
}

constexpr float power_of_two_constant(int e) { return __builtin_bit_cast(float, std::uint32_t(127 + e) << 23); }

template <class V, Grid G, bool Away>
struct FastRounder {
  using F = typename V::F;
  using I = typename V::I;

  static F round(F a) {
    a = V::min_f(a, V::set_f(2.0f * G.max_value));
    const I exponent = V::max_i(V::template shr_c<23>(V::bits(a)), V::set_i(G.emin_field));
    const F magic = V::flt(V::template shl_c<23>(V::add_i(exponent, V::set_i(23 - G.man_bits))));
    F r = V::sub(V::add(a, magic), magic);
    if constexpr (Away) {
      const F half = V::flt(V::template shl_c<23>(V::sub_i(exponent, V::set_i(G.man_bits + 1))));
      r = V::select_f(V::eq_f(V::sub(a, r), half), V::add(r, V::add(half, half)), r);
    }
    return V::min_f(r, V::set_f(G.max_value));
  }

  static I code(F r, I sign) {
    const I subnormal = V::cvtt(V::mul(r, V::set_f(power_of_two_constant(G.man_bits - (G.emin_field - 127)))));
    if constexpr (G.is_int) {
      const auto negative = V::gt_i(V::set_i(0), sign);
      return V::select_i(negative, V::and_i(V::sub_i(V::set_i(0), subnormal), V::set_i((1 << G.bits) - 1)), subnormal);
    } else {
      const I rb = V::bits(r);
      const I normal = V::sub_i(V::template shr_c<23 - G.man_bits>(rb), V::set_i((127 - G.bias) << G.man_bits));
      const I magnitude = V::select_i(V::gt_i(rb, V::set_i((G.emin_field << 23) - 1)), normal, subnormal);
      return V::or_i(magnitude, V::template shr_c<32 - G.bits>(sign));
    }
  }

  static F signed_value(F r, I sign) {
    const F v = V::flt(V::or_i(V::bits(r), sign));
    if constexpr (G.is_int) return V::add(v, V::set_f(0.0f));  // integer code 0 decodes to +0
    else return v;
  }
};

// The scale of an ordinary block from its amax bits, or ok = false for the general path.
struct FastScale {
  bool ok;
  float to_grid;      // multiply (MX) or divide (sint4, nvfp4) the values by this
  float scale;        // multiply the grid values by this
  float post;         // and then by this (nvfp4's tensor scale; 1 otherwise)
  std::uint32_t code; // the stored scale code
};

template <class V, Format Fmt>
FastScale fast_scale(std::int32_t amax_bits, float tensor_scale) {
  constexpr Grid G = grid_for<Fmt>();
  if (amax_bits >= 0x7F800000) return {false, 0, 0, 0, 0};
  const float amax = __builtin_bit_cast(float, amax_bits);
  if constexpr (Fmt == Format::sint4) {
    const std::uint16_t code = V::fp16_code(amax / 7.0f);
    const float step = V::fp16_value(code);
    return {step != 0.0f, step, step, 1.0f, code};
  } else if constexpr (Fmt == Format::nvfp4) {
    if (tensor_scale == 0.0f) return {false, 0, 0, 0, 0};
    const std::uint8_t code = fast_e4m3_code(amax / 6.0f / tensor_scale);
    const float block_scale = fast_e4m3_value(code);
    const float divisor = block_scale * tensor_scale;
    return {divisor != 0.0f, divisor, block_scale, tensor_scale, code};
  } else {
    // shared_exp = floor(log2 amax) - emax within [-126, 126]: both 2^-shared_exp and 2^shared_exp
    // are normal floats built from their exponent bits.
    constexpr std::int32_t lowest = (G.emax + 1) << 23, beyond = (254 + G.emax < 255 ? 254 + G.emax : 255) << 23;
    if (amax_bits < lowest || amax_bits >= beyond) return {false, 0, 0, 0, 0};
    const int shared_exp = (amax_bits >> 23) - 127 - G.emax;
    return {true, power_of_two_constant(-shared_exp), power_of_two_constant(shared_exp), 1.0f,
            std::uint32_t(shared_exp + 127)};
  }
}

// sint4's elements without a division. The reference divides each value by the block's step and
// rounds the fp32 quotient q to an integer; vdivps is the slowest instruction of that loop (several
// times the cost of a multiply). Here t = x * (1 / step) stands in for q: t is within 2^-18 of q
// (two roundings, each within 2^-24 relative, and |q| < 16, which the first test below ensures; it
// fails only where the fp16 step saturated, for amax beyond 7 x 65504). So wherever t lies farther
// than kTieGuard = 2^-16 from every half-integer, q and t round to the same integer, in either
// rounding mode (they differ only at ties). A block with any value that close to a tie returns false
// and takes the dividing path, so the bits are the reference's (tests/cpp/test_simd.cpp draws exact
// and near ties on purpose).
constexpr float kTieGuard = 1.0f / 65536.0f;

// t = x x reciprocal for the K vectors at x, and d = t - round(t) (exact): t - d is t rounded to an
// integer (+0 where a negative t rounds to zero, as decoding code 0 gives; -0 for t = -0, which the
// caller turns into +0). Returns whether any value lies within kTieGuard of a tie, where t may round
// otherwise than the reference's quotient.
template <class V, int K>
bool sint4_quotients(const float* x, float reciprocal, typename V::F (&t)[K], typename V::F (&d)[K]) {
  const typename V::F inv = V::set_f(reciprocal);
  typename V::F largest = V::zero_f();
  for (int k = 0; k < K; ++k) {
    t[k] = V::mul(V::load(x + k * V::W), inv);
    d[k] = V::frac(t[k]);
    largest = V::max_abs(largest, d[k]);
  }
  return V::any(V::gt_f(largest, V::set_f(0.5f - kTieGuard)));
}

template <class V, bool Pack, int K>
bool sint4_block_by_reciprocal(const float* in, float amax, float step, float* out, typename V::I (&c)[K],
                               bool stream) {
  using F = typename V::F;
  using I = typename V::I;
  const float reciprocal = 1.0f / step;
  if (!(amax * reciprocal < 15.0f)) return false;
  F t[K], d[K];
  if (sint4_quotients<V, K>(in, reciprocal, t, d)) return false;
  const F step_v = V::set_f(step);
  for (int k = 0; k < K; ++k) {
    // Saturation as the reference's: |q| beyond 7 gives +-7 (7.5 itself is a tie, never here).
    const I q = V::min_i(V::max_i(V::cvt_nearest(t[k]), V::set_i(-7)), V::set_i(7));
    if constexpr (Pack) {
      c[k] = V::and_i(q, V::set_i(0xF));  // two's complement nibble
    } else {
      const F v = V::mul(V::cvt(q), step_v);  // code 0 gives +0, as decoding it does
      if (stream) V::stream(out + k * V::W, v);
      else V::store(out + k * V::W, v);
    }
  }
  return true;
}

template <Format Fmt>
constexpr int block_for() {
  return Fmt == Format::sint4 ? 64 : Fmt == Format::nvfp4 ? 16 : 32;
}

// Blocks of B values in groups of W, one block per vector lane: `group(first, n, amax_bits,
// next_max)` handles blocks [first, first + n) given their amax bits as one vector (lane g = block
// first + g), and calls next_max(g) once per block g it handles, in order, which takes the largest
// magnitude of block g of the next group. So no block waits on a horizontal maximum followed by its
// scalar scale computation (the chain that bounded the per-block path: about 55 cycles a sint4 block
// in cache on Emerald Rapids, for some 25 vector instructions), and loads and stores alternate
// evenly, the next group's memory being read while this one computes. Taking a group's maxima in one
// burst before quantizing it instead ran at 0.58 of memcpy out of cache with streaming stores (sint4,
// 4608x1152), against 0.83 interleaved.
template <class V, int B, class Group>
void block_groups(const float* in, std::int64_t blocks, Group&& group) {
  using I = typename V::I;
  constexpr int K = B / V::W;
  const I abs_mask = V::set_i(0x7FFFFFFF);
  const auto block_max = [&](const float* x) {
    I m = V::and_i(V::bits(V::load(x)), abs_mask);
    for (int k = 1; k < K; ++k) m = V::max_i(m, V::and_i(V::bits(V::load(x + k * V::W)), abs_mask));
    return m;
  };
  I m[V::W];
  const auto group_size = [&](std::int64_t first) { return int(std::min<std::int64_t>(V::W, blocks - first)); };
  for (int g = 0; g < V::W; ++g) m[g] = g < group_size(0) ? block_max(in + g * B) : V::zero_i();
  for (std::int64_t first = 0; first < blocks; first += V::W) {
    const int n = group_size(first), next = first + V::W < blocks ? group_size(first + V::W) : 0;
    group(first, n, V::transpose_max(m),
          [&](int g) { m[g] = g < next ? block_max(in + (first + V::W + g) * B) : V::zero_i(); });
  }
}

// sint4 over block_groups. The scale is fast_scale's, step = fp16(min(amax / 7, 65504)) rounded to
// nearest even, and the elements are sint4_block_by_reciprocal's, for blocks with amax x (1 / step)
// < 7.5, where |t| < 7.5 needs no clamp to -7..7. Any other block (non-finite, zero, an
// fp16-subnormal step, a value near a tie) goes to `fallback(b, amax_bits)`, the per-block path.
template <class V, bool Pack, class Fallback>
void sint4_blocks(const float* in, std::int64_t blocks, float* out, std::uint8_t* codes, std::uint8_t* scales,
                  bool stream, Fallback&& fallback) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int B = 64, K = B / V::W;
  block_groups<V, B>(in, blocks, [&](std::int64_t first, int n, I amax_bits, auto&& next_max) {
    const F amax = V::flt(amax_bits);
    alignas(64) std::uint16_t scale_codes[V::W];
    alignas(64) float steps[V::W], reciprocals[V::W];
    alignas(64) std::int32_t amaxes[V::W];
    const F step = V::fp16_round_codes(V::min_f(V::div(amax, V::set_f(7.0f)), V::set_f(65504.0f)), scale_codes);
    const F reciprocal = V::div(V::set_f(1.0f), step);
    // Non-finite amax lanes fail the integer test; a zero step gives an infinite or NaN product.
    const unsigned fast = V::lane_bits(V::and_m(V::gt_i(V::set_i(0x7F800000), amax_bits),
                                                V::lt_f(V::mul(amax, reciprocal), V::set_f(7.5f))));
    V::store(steps, step);
    V::store(reciprocals, reciprocal);
    V::store_i32(amaxes, amax_bits);
    if constexpr (Pack) std::memcpy(scales + 2 * first, scale_codes, 2 * std::size_t(n));  // little-endian fp16
    for (int g = 0; g < n; ++g) {
      next_max(g);
      const float* x = in + (first + g) * B;
      F t[K], d[K];
      if (!(fast >> g & 1) || sint4_quotients<V, K>(x, reciprocals[g], t, d)) {
        fallback(first + g, amaxes[g]);
        continue;
      }
      if constexpr (Pack) {
        I c[K];
        for (int k = 0; k < K; ++k) c[k] = V::and_i(V::cvt_nearest(t[k]), V::set_i(0xF));  // two's complement nibble
        V::template store_codes<4, K>(c, codes + (first + g) * B / 2);
      } else {
        const F s = V::set_f(steps[g]);
        float* y = out + (first + g) * B;
        for (int k = 0; k < K; ++k) {
          // t - d is t rounded, but -0 for t = -0 (an input -0): adding +0 makes it the +0 that
          // decoding code 0 gives.
          const F v = V::mul(V::add(V::sub(t[k], d[k]), V::zero_f()), s);
          if (stream) V::stream(y + k * V::W, v);
          else V::store(y + k * V::W, v);
        }
      }
    }
  });
}

// The MX formats over block_groups: fast_scale's shared exponent for W blocks at once (integer
// operations on the amax bits), then `block(b, amax_bits, scale)` for each block, which is
// fast_block_row's per-block step (the general path where scale.ok is false).
template <class V, Format Fmt, class Block>
void mx_blocks(const float* in, std::int64_t blocks, Block&& block) {
  using I = typename V::I;
  constexpr Grid G = grid_for<Fmt>();
  constexpr std::int32_t lowest = (G.emax + 1) << 23, beyond = (254 + G.emax < 255 ? 254 + G.emax : 255) << 23;
  block_groups<V, block_for<Fmt>()>(in, blocks, [&](std::int64_t first, int n, I amax_bits, auto&& next_max) {
    const I shared_exp = V::sub_i(V::template shr_c<23>(amax_bits), V::set_i(127 + G.emax));
    const unsigned ok = V::lane_bits(
        V::and_m(V::gt_i(amax_bits, V::set_i(lowest - 1)), V::gt_i(V::set_i(beyond), amax_bits)));
    alignas(64) std::int32_t amaxes[V::W], exps[V::W];
    V::store_i32(amaxes, amax_bits);
    V::store_i32(exps, shared_exp);
    for (int g = 0; g < n; ++g) {
      next_max(g);
      const int e = exps[g];
      const FastScale s = (ok >> g & 1) ? FastScale{true, power_of_two_constant(-e), power_of_two_constant(e), 1.0f,
                                                    std::uint32_t(e + 127)}
                                        : FastScale{false, 0, 0, 0, 0};
      block(first + g, amaxes[g], s);
    }
  });
}

// nvfp4 over block_groups: fast_scale's e4m3 block scale for W blocks at once (the magic-sum
// rounding of FastRounder on amax / 6 / tensor_scale), then `block(b, amax_bits, scale)` for each
// block, as mx_blocks does.
template <class V, class Block>
void nvfp4_blocks(const float* in, std::int64_t blocks, float tensor_scale, Block&& block) {
  using F = typename V::F;
  using I = typename V::I;
  using E4M3 = FastRounder<V, kE4M3, false>;
  block_groups<V, 16>(in, blocks, [&](std::int64_t first, int n, I amax_bits, auto&& next_max) {
    // Lanes with a non-finite amax (or a zero tensor scale) compute garbage here and are not used.
    const F block_scale = E4M3::round(V::div(V::div(V::flt(amax_bits), V::set_f(6.0f)), V::set_f(tensor_scale)));
    const F divisor = V::mul(block_scale, V::set_f(tensor_scale));
    const unsigned ok = tensor_scale == 0.0f ? 0u : V::lane_bits(V::and_m(V::gt_i(V::set_i(0x7F800000), amax_bits),
                                                                        V::gt_f(divisor, V::zero_f())));
    alignas(64) float scales[V::W], divisors[V::W];
    alignas(64) std::int32_t amaxes[V::W], codes[V::W];
    V::store(scales, block_scale);
    V::store(divisors, divisor);
    V::store_i32(amaxes, amax_bits);
    V::store_i32(codes, E4M3::code(block_scale, V::zero_i()));
    for (int g = 0; g < n; ++g) {
      next_max(g);
      block(first + g, amaxes[g],
            (ok >> g & 1) ? FastScale{true, divisors[g], scales[g], tensor_scale, std::uint32_t(codes[g])}
                          : FastScale{false, 0, 0, 0, 0});
    }
  });
}

template <class V, Format Fmt, bool Away, bool Pack>
void fast_block_row(const float* in, float* out, std::int64_t cols, float tensor_scale, Rounding rounding,
                    std::uint8_t* codes, std::uint8_t* scales, bool stream) {
  constexpr Grid G = grid_for<Fmt>();
  constexpr int B = block_for<Fmt>();
  constexpr int K = B / V::W;
  constexpr bool divide = Fmt == Format::sint4 || Fmt == Format::nvfp4;
  constexpr int scale_width = Fmt == Format::sint4 ? 2 : 1;
  using F = typename V::F;
  using I = typename V::I;
  using R = FastRounder<V, G, Away>;
  const GridRounder<V> general(G, rounding);
  const I abs_mask = V::set_i(0x7FFFFFFF), sign_mask = V::set_i(static_cast<std::int32_t>(0x80000000u));
  const std::int64_t whole = cols / B * B;
  const auto finish_block = [&](std::int64_t start, std::int64_t b, std::int32_t amax_bits, const FastScale& s) {
    if (!s.ok) {
      quantize_scaled<V>(Fmt, general, in + start, B, {__builtin_bit_cast(float, amax_bits), amax_bits < 0x7F800000},
                         tensor_scale, Pack ? nullptr : out + start, Pack ? codes + start * G.bits / 8 : nullptr,
                         Pack ? scales + b * scale_width : nullptr);
      return;
    }
    const F to_grid = V::set_f(s.to_grid), scale = V::set_f(s.scale);
    I c[K];
    bool done = false;
    if constexpr (Fmt == Format::sint4)
      done = sint4_block_by_reciprocal<V, Pack, K>(in + start, __builtin_bit_cast(float, amax_bits), s.to_grid,
                                                   Pack ? nullptr : out + start, c, stream);
    if constexpr (G.is_int && !divide && !Away) {
      // MX integers with ties to even: the grid is the integers times 2^-f (1/64 for mxint8, 1/4 for
      // mxint4), so the code is the FPU's ties-to-even conversion of t x 2^f, clamped to +-max:
      // five operations where R takes some fifteen. t x 2^f is exact (t below 2^-126, where x x
      // to_grid may have rounded, lies far below the grid step), and code x 2^(e - f) is the product R
      // computes, rounded once, +0 for code 0.
      constexpr float units = power_of_two_constant(G.man_bits - (G.emin_field - 127));
      constexpr std::int32_t largest = std::int32_t(G.max_value * units);
      const F step = V::set_f(s.scale / units);
      for (int k = 0; k < K; ++k) {
        const F t = V::mul(V::mul(V::load(in + start + k * V::W), to_grid), V::set_f(units));
        const I q = V::min_i(V::max_i(V::cvt_nearest(t), V::set_i(-largest)), V::set_i(largest));
        if constexpr (Pack) {
          c[k] = V::and_i(q, V::set_i((1 << G.bits) - 1));
        } else {
          const F v = V::mul(V::cvt(q), step);
          if (stream) V::stream(out + start + k * V::W, v);
          else V::store(out + start + k * V::W, v);
        }
      }
      done = true;
    }
    for (int k = 0; k < K && !done; ++k) {
      const F x = V::load(in + start + k * V::W);
      const F t = divide ? V::div(x, to_grid) : V::mul(x, to_grid);
      const I sign = V::and_i(V::bits(t), sign_mask);
      const F r = R::round(V::flt(V::and_i(V::bits(t), abs_mask)));
      if constexpr (Pack) {
        c[k] = R::code(r, sign);
      } else {
        F v = V::mul(R::signed_value(r, sign), scale);
        if constexpr (Fmt == Format::nvfp4) v = V::mul(v, V::set_f(s.post));
        if (stream) V::stream(out + start + k * V::W, v);
        else V::store(out + start + k * V::W, v);
      }
    }
    if constexpr (Pack) {
      std::uint8_t* dst = codes + start * G.bits / 8;
      if constexpr (G.bits == 6) {
        for (int k = 0; k < K; ++k) store_code_vector<V>(c[k], 6, dst + k * V::W * 6 / 8);
      } else {
        V::template store_codes<G.bits, K>(c, dst);
      }
      for (int i = 0; i < scale_width; ++i) scales[b * scale_width + i] = std::uint8_t(s.code >> (8 * i));
    }
  };
  // The whole blocks a group at a time (block_groups), each block through finish_block; sint4's
  // ordinary blocks have their own loop, and only its others come here.
  const auto each_block = [&](std::int64_t block, std::int32_t amax_bits, const FastScale& s) {
    finish_block(block * B, block, amax_bits, s);
  };
  if constexpr (Fmt == Format::sint4) {
    sint4_blocks<V, Pack>(in, whole / B, out, codes, scales, stream, [&](std::int64_t block, std::int32_t amax_bits) {
      each_block(block, amax_bits, fast_scale<V, Fmt>(amax_bits, tensor_scale));
    });
  } else if constexpr (Fmt == Format::nvfp4) {
    nvfp4_blocks<V>(in, whole / B, tensor_scale, each_block);
  } else {
    mx_blocks<V, Fmt>(in, whole / B, each_block);
  }
  if (whole < cols)  // the partial last block
    quantize_block_row<V>(Fmt, in + whole, Pack ? nullptr : out + whole, cols - whole, tensor_scale, rounding,
                          Pack ? codes + whole * G.bits / 8 : nullptr, Pack ? scales + whole / B * scale_width : nullptr);
}

template <class V, Format Fmt, bool Pack>
void fast_row(const float* in, float* out, std::int64_t cols, float tensor_scale, Rounding rounding,
              std::uint8_t* codes, std::uint8_t* scales, bool stream) {
  if (rounding == Rounding::nearest_away)
    fast_block_row<V, Fmt, true, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
  else
    fast_block_row<V, Fmt, false, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
}

// The 16-bit casts of FORMATS.md ("no quantization, just the cast") as the reference computes them:
// round to nearest even; a finite value that rounds past the largest finite one saturates to it (the
// reference's rule for every element format), Inf keeps its sign, NaN becomes the quiet NaN
// 0x7FC00000. fp16 rounds by F16C after clamping the magnitude at 65504; bf16 rounds on the bit
// pattern (add 0x7FFF plus the kept lsb, clear the low half), which is exact for subnormals too.
// Fake quantization with ties-even only: the dispatcher sends ties-away and packing to the reference.
template <class V, Format Fmt>
typename V::F cast16(typename V::F x) {
  using I = typename V::I;
  const I b = V::bits(x), a = V::and_i(b, V::set_i(0x7FFFFFFF)), inf = V::set_i(0x7F800000);
  const I sign = V::and_i(b, V::set_i(std::int32_t(0x80000000u)));
  I magnitude;
  if constexpr (Fmt == Format::fp16) {
    magnitude = V::bits(V::fp16_round(V::min_f(V::flt(a), V::set_f(65504.0f))));
  } else {
    static_assert(Fmt == Format::bf16);
    const I lsb = V::and_i(V::template shr_c<16>(a), V::set_i(1));
    const I rounded = V::and_i(V::add_i(a, V::add_i(V::set_i(0x7FFF), lsb)), V::set_i(std::int32_t(0xFFFF0000u)));
    const I largest = V::set_i(0x7F7F0000);
    magnitude = V::select_i(V::gt_i(rounded, largest), largest, rounded);
  }
  const I finite = V::or_i(sign, magnitude);
  const I special = V::select_i(V::gt_i(a, inf), V::set_i(0x7FC00000), b);  // NaN, or +-Inf as it is
  return V::flt(V::select_i(V::gt_i(inf, a), finite, special));
}

template <class V, Format Fmt>
void cast16_row(const float* in, float* out, std::int64_t cols, bool stream) {
  std::int64_t i = 0;
  for (; i + V::W <= cols; i += V::W) {
    const typename V::F r = cast16<V, Fmt>(V::load(in + i));
    if (stream) V::stream(out + i, r);
    else V::store(out + i, r);
  }
  if (i < cols) {  // the tail through one zero-padded vector
    float tail[V::W] = {};
    std::memcpy(tail, in + i, std::size_t(cols - i) * sizeof(float));
    V::store(tail, cast16<V, Fmt>(V::load(tail)));
    std::memcpy(out + i, tail, std::size_t(cols - i) * sizeof(float));
  }
}

template <class V, bool Pack>
void quantize_row(Format f, const float* in, float* out, std::int64_t cols, float tensor_scale, Rounding rounding,
                  std::uint8_t* codes, std::uint8_t* scales, bool stream) {
  switch (f) {
    case Format::mxfp8_e4m3: return fast_row<V, Format::mxfp8_e4m3, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::mxfp8_e5m2: return fast_row<V, Format::mxfp8_e5m2, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::mxfp6_e2m3: return fast_row<V, Format::mxfp6_e2m3, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::mxfp6_e3m2: return fast_row<V, Format::mxfp6_e3m2, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::mxfp4: return fast_row<V, Format::mxfp4, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::mxint8: return fast_row<V, Format::mxint8, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::mxint4: return fast_row<V, Format::mxint4, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::sint4: return fast_row<V, Format::sint4, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::nvfp4: return fast_row<V, Format::nvfp4, Pack>(in, out, cols, tensor_scale, rounding, codes, scales, stream);
    case Format::int8_channel: return quantize_channel_row<V>(f, in, out, cols, rounding, codes, scales);
    case Format::fp16:  // fake quantization only (vector_kernels() sends packing to the reference)
      if constexpr (!Pack) cast16_row<V, Format::fp16>(in, out, cols, stream);
      return;
    case Format::bf16:
      if constexpr (!Pack) cast16_row<V, Format::bf16>(in, out, cols, stream);
      return;
  }
}

template <class V>
bool supports(Format f) {
  switch (f) {
    case Format::mxfp8_e4m3:
    case Format::mxfp8_e5m2:
    case Format::mxfp6_e2m3:
    case Format::mxfp6_e3m2:
    case Format::mxfp4:
    case Format::mxint8:
    case Format::mxint4:
    case Format::sint4:
    case Format::nvfp4: return true;
    case Format::int8_channel: return true;
    case Format::fp16:
    case Format::bf16: return true;  // fake quantization with ties-even only (cast16 above)
  }
  return false;
}

template <class V>
void fake_quantize_row(Format f, const float* in, float* out, std::int64_t cols, float tensor_scale,
                       Rounding rounding, bool stream) {
  // Streaming (non-temporal) stores skip reading the destination into cache first; they need
  // vector-aligned rows, and a fence (stream_fence) so that other threads see the values after the
  // join. The caller fences once per thread: a fence per row waits for every row's stores to drain,
  // which cost a quarter of the throughput on 1152-value rows (Emerald Rapids, 2 threads).
  stream = stream && reinterpret_cast<std::uintptr_t>(out) % (V::W * sizeof(float)) == 0;
  quantize_row<V, false>(f, in, out, cols, tensor_scale, rounding, nullptr, nullptr, stream);
}

template <class V>
void pack_row(Format f, const float* in, std::int64_t cols, float tensor_scale, Rounding rounding,
              std::uint8_t* codes, std::uint8_t* scales) {
  quantize_row<V, true>(f, in, nullptr, cols, tensor_scale, rounding, codes, scales, false);
}

template <class V>
float finite_amax(const float* x, std::int64_t n) {
  const typename V::I abs_mask = V::set_i(0x7FFFFFFF), inf_bits = V::set_i(0x7F800000), zero = V::set_i(0);
  typename V::I m = zero;
  std::int64_t i = 0;
  for (; i + V::W <= n; i += V::W) {
    const typename V::I b = V::and_i(V::bits(V::load(x + i)), abs_mask);
    m = V::max_i(m, V::select_i(V::gt_i(inf_bits, b), b, zero));  // NaN and Inf count as 0
  }
  std::int32_t amax = V::hmax_i(m);
  for (; i < n; ++i) {
    std::int32_t b;
    std::memcpy(&b, x + i, 4);
    b &= 0x7FFFFFFF;
    if (b < 0x7F800000 && b > amax) amax = b;
  }
  return __builtin_bit_cast(float, amax);
}

template <class V>
const detail::VectorKernels* kernel_table() {
  static const detail::VectorKernels table{&supports<V>, &fake_quantize_row<V>, &V::fence, &pack_row<V>,
                                           &finite_amax<V>};
  return &table;
}

}  // namespace
