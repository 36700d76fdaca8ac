// One templated codec for every element encoding (the scalar reference).
//
// Two parametric families, after CUTLASS's FpBitRepresentation:
//   SmallFloat<ExpBits, ManBits, Special, Signed>: s.e..e.m..m with bias 2^(E-1)-1;
//   FixedPoint<Bits, FracBits>: two's complement k, value k * 2^-FracBits, symmetric range.
// Rounding is done in double on the exact grid (every fp32 value and every grid point is exact in
// double), so this file is the definition the vectorized paths are tested against, bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "loraq/element.hpp"

namespace loraq::detail {

enum class Special : std::uint8_t {
  none,      // every code is a finite number (e2m1, e2m3, e3m2)
  nan_only,  // s.1..1.1..1 is NaN, no Inf (e4m3 "fn")
  ieee,      // exponent all ones is Inf (mantissa 0) or NaN (e5m2, fp16, bf16)
  e8m0,      // unsigned powers of two, no zero, 0xFF is NaN
};

// Round a non-negative value that is exactly representable in double to an integer.
inline double round_integer(double m, Rounding rounding) {
  const double lower = std::floor(m);
  const double fraction = m - lower;  // exact: m has at most 53 significant bits
  if (fraction > 0.5) return lower + 1.0;
  if (fraction < 0.5) return lower;
  switch (rounding) {
    case Rounding::nearest_away: return lower + 1.0;
    case Rounding::nearest_even: return std::fmod(lower, 2.0) == 0.0 ? lower : lower + 1.0;
  }
  return lower;
}

template <int ExpBits, int ManBits, Special S, bool Signed = true>
struct SmallFloat {
  static constexpr int exp_bits = ExpBits;
  static constexpr int man_bits = ManBits;
  static constexpr int bits = (Signed ? 1 : 0) + ExpBits + ManBits;
  static constexpr int bias = (1 << (ExpBits - 1)) - 1;
  static constexpr int emin = S == Special::e8m0 ? -bias : 1 - bias;  // exponent of the smallest normal
  static constexpr std::uint32_t sign_bit = Signed ? 1u << (bits - 1) : 0u;
  static constexpr std::uint32_t exp_all_ones = (1u << ExpBits) - 1;
  // The largest finite code's exponent field and mantissa.
  static constexpr std::uint32_t max_exp_field =
      S == Special::ieee || S == Special::e8m0 ? exp_all_ones - 1 : exp_all_ones;
  static constexpr std::uint32_t max_mantissa =
      S == Special::nan_only ? (1u << ManBits) - 2 : (1u << ManBits) - 1;
  static constexpr int emax = static_cast<int>(max_exp_field) - bias;
  static constexpr std::uint32_t max_code = (max_exp_field << ManBits) | max_mantissa;
  static constexpr bool has_nan = S != Special::none;
  static constexpr bool has_inf = S == Special::ieee;
  static constexpr std::uint32_t nan_code =
      S == Special::ieee ? (exp_all_ones << ManBits) | (1u << (ManBits - 1))
                         : (exp_all_ones << ManBits) | ((1u << ManBits) - 1);
  static constexpr std::uint32_t inf_code = exp_all_ones << ManBits;

  static double max_value() { return std::ldexp(1.0 + double(max_mantissa) / (1 << ManBits), emax); }

  static float decode(std::uint32_t code) {
    code &= (1u << bits) - 1;
    const bool negative = (code & sign_bit) != 0;
    const std::uint32_t magnitude = code & ~sign_bit;
    const std::uint32_t exp_field = magnitude >> ManBits;
    const std::uint32_t mantissa = magnitude & ((1u << ManBits) - 1);
    double value;
    if constexpr (S == Special::e8m0) {
      if (exp_field == exp_all_ones) return std::numeric_limits<float>::quiet_NaN();
      value = std::ldexp(1.0, static_cast<int>(exp_field) - bias);
    } else {
      if constexpr (S == Special::nan_only) {
        if (exp_field == exp_all_ones && mantissa == (1u << ManBits) - 1)
          return std::numeric_limits<float>::quiet_NaN();
      }
      if constexpr (S == Special::ieee) {
        if (exp_field == exp_all_ones) {
          if (mantissa != 0) return std::numeric_limits<float>::quiet_NaN();
          return negative ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
        }
      }
      value = exp_field == 0 ? std::ldexp(double(mantissa), emin - ManBits)
                             : std::ldexp(double((1u << ManBits) | mantissa), static_cast<int>(exp_field) - bias - ManBits);
    }
    return static_cast<float>(negative ? -value : value);
  }

  // Code of a finite magnitude that already lies on the grid and within range.
  static std::uint32_t code_of_grid_value(double v) {
    if (v == 0.0) return 0;
    const int e = std::ilogb(v);
    if (e < emin) return static_cast<std::uint32_t>(std::ldexp(v, ManBits - emin));  // subnormal
    const auto mantissa = static_cast<std::uint32_t>(std::ldexp(v, ManBits - e)) - (1u << ManBits);
    return (static_cast<std::uint32_t>(e + bias) << ManBits) | mantissa;
  }

  static std::uint32_t encode(double x, Rounding rounding) {
    if (std::isnan(x)) return has_nan ? nan_code : 0u;
    const bool negative = Signed && std::signbit(x);
    const std::uint32_t sign = negative ? sign_bit : 0u;
    double a = std::fabs(x);
    if constexpr (S == Special::e8m0) {
      if (std::isinf(x) || std::signbit(x)) return nan_code;  // no Inf, no sign: the scale is NaN
      if (a == 0.0) return 0;                                 // clamp at the low end: 2^-127
    } else {
      if (std::isinf(a)) return has_inf ? sign | inf_code : sign | max_code;  // saturate
    }
    // Grid step in the binade of a (or the subnormal step): 2^(e - ManBits).
    const int e = a == 0.0 ? emin : std::max(std::ilogb(a), emin);
    const double rounded = std::ldexp(round_integer(std::ldexp(a, ManBits - e), rounding), e - ManBits);
    const double largest = max_value();
    if (rounded >= largest) return sign | max_code;  // saturate (MX convention)
    return sign | code_of_grid_value(rounded);
  }
};

template <int Bits, int FracBits>
struct FixedPoint {
  static constexpr int bits = Bits;
  static constexpr std::int32_t max_integer = (1 << (Bits - 1)) - 1;  // -2^(Bits-1) is never produced
  static constexpr int emax = Bits - 2 - FracBits;                    // binade of the largest value
  static constexpr bool has_nan = false;
  static constexpr bool has_inf = false;

  static double max_value() { return std::ldexp(double(max_integer), -FracBits); }

  static float decode(std::uint32_t code) {
    code &= (1u << Bits) - 1;
    std::int32_t k = static_cast<std::int32_t>(code);
    if (k > (1 << (Bits - 1)) - 1) k -= 1 << Bits;  // two's complement
    return static_cast<float>(std::ldexp(double(k), -FracBits));
  }

  static std::uint32_t encode(double x, Rounding rounding) {
    if (std::isnan(x)) return 0;
    const double a = std::min(std::fabs(x), max_value() * 2.0);  // keeps Inf out of the rounding
    auto k = static_cast<std::int32_t>(round_integer(std::ldexp(a, FracBits), rounding));
    if (k > max_integer) k = max_integer;  // saturate
    if (std::signbit(x)) k = -k;
    return static_cast<std::uint32_t>(k) & ((1u << Bits) - 1);
  }
};

// The element encodings of FORMATS.md as instances of the two families.
using E2M1 = SmallFloat<2, 1, Special::none>;
using E2M3 = SmallFloat<2, 3, Special::none>;
using E3M2 = SmallFloat<3, 2, Special::none>;
using E4M3 = SmallFloat<4, 3, Special::nan_only>;
using E5M2 = SmallFloat<5, 2, Special::ieee>;
using E8M0 = SmallFloat<8, 0, Special::e8m0, false>;
using FP16 = SmallFloat<5, 10, Special::ieee>;
using BF16 = SmallFloat<8, 7, Special::ieee>;
using MxInt8 = FixedPoint<8, 6>;
using MxInt4 = FixedPoint<4, 2>;
using Int4 = FixedPoint<4, 0>;
using Int8 = FixedPoint<8, 0>;

static_assert(E2M1::max_code == 0x7 && E4M3::max_code == 0x7E && E5M2::max_code == 0x7B);
static_assert(E4M3::nan_code == 0x7F && E5M2::inf_code == 0x7C && E8M0::nan_code == 0xFF);
static_assert(E2M1::emax == 2 && E2M3::emax == 2 && E3M2::emax == 4 && E4M3::emax == 8 && E5M2::emax == 15);
static_assert(MxInt8::emax == 0 && MxInt4::emax == 0, "FORMATS.md: emax_elem of int8 and int4 is 0");

// Calls f with the codec type of element e: the single switch that maps the enum to the template.
template <class F>
decltype(auto) with_codec(Element e, F&& f) {
  switch (e) {
    case Element::e2m1: return f(E2M1{});
    case Element::e2m3: return f(E2M3{});
    case Element::e3m2: return f(E3M2{});
    case Element::e4m3: return f(E4M3{});
    case Element::e5m2: return f(E5M2{});
    case Element::mx_int8: return f(MxInt8{});
    case Element::mx_int4: return f(MxInt4{});
    case Element::int4: return f(Int4{});
    case Element::int8: return f(Int8{});
    case Element::e8m0: return f(E8M0{});
    case Element::fp16: return f(FP16{});
    case Element::bf16: return f(BF16{});
  }
  return f(E2M1{});  // unreachable for valid enum values; -Wswitch guards the list
}

}  // namespace loraq::detail
