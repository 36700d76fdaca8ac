// Exhaustive tests of every element encoding against the contract in ../shared/FORMATS.md.
// Expected constants are the contract's own numbers, not the program's output.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "loraq/element.hpp"

namespace loraq {
namespace {

constexpr Rounding kModes[] = {Rounding::nearest_even, Rounding::nearest_away};

bool is_nan_code(Element e, std::uint32_t code) { return std::isnan(decode(e, code)); }
bool is_integer_element(Element e) {
  return e == Element::mx_int8 || e == Element::mx_int4 || e == Element::int4 || e == Element::int8;
}
std::uint32_t code_count(Element e) { return 1u << element_info(e).bits; }
std::uint32_t sign_bit(Element e) { return 1u << (element_info(e).bits - 1); }

// Two's complement codes of -2^(bits-1) exist in the storage but are never produced (FORMATS.md).
bool is_unused_int_code(Element e, std::uint32_t code) { return is_integer_element(e) && code == sign_bit(e); }

TEST(Element, ContractConstants) {
  struct Row {
    Element e;
    int bits;
    double max_normal, min_subnormal;
  };
  const Row rows[] = {
      {Element::e2m1, 4, 6.0, 0.5},          {Element::e2m3, 6, 7.5, 0.125},
      {Element::e3m2, 6, 28.0, 0.0625},      {Element::e4m3, 8, 448.0, std::ldexp(1.0, -9)},
      {Element::e5m2, 8, 57344.0, std::ldexp(1.0, -16)}, {Element::mx_int8, 8, 127.0 / 64, 1.0 / 64},
      {Element::mx_int4, 4, 7.0 / 4, 0.25},  {Element::e8m0, 8, std::ldexp(1.0, 127), std::ldexp(1.0, -127)},
      {Element::int4, 4, 7.0, 1.0},          {Element::int8, 8, 127.0, 1.0},
      {Element::fp16, 16, 65504.0, std::ldexp(1.0, -24)}, {Element::bf16, 16, 3.3895313892515355e38, std::ldexp(1.0, -133)},
  };
  for (const Row& r : rows) {
    const ElementInfo& info = element_info(r.e);
    SCOPED_TRACE(std::string(info.name));
    EXPECT_EQ(info.bits, r.bits);
    EXPECT_EQ(double(info.max_value), r.max_normal);
    EXPECT_EQ(double(info.min_subnormal), r.min_subnormal);
  }
  EXPECT_EQ(element_info(Element::e2m1).emax, 2);
  EXPECT_EQ(element_info(Element::e2m3).emax, 2);
  EXPECT_EQ(element_info(Element::e3m2).emax, 4);
  EXPECT_EQ(element_info(Element::e4m3).emax, 8);
  EXPECT_EQ(element_info(Element::e5m2).emax, 15);
  EXPECT_EQ(element_info(Element::mx_int8).emax, 0);
  EXPECT_EQ(element_info(Element::mx_int4).emax, 0);
}

TEST(Element, SpecialCodes) {
  // e4m3 "fn": only s.1111.111 is NaN; 0x7E is 448. e5m2: IEEE Inf and NaN. e8m0: 0xFF is NaN.
  EXPECT_TRUE(std::isnan(decode(Element::e4m3, 0x7F)));
  EXPECT_TRUE(std::isnan(decode(Element::e4m3, 0xFF)));
  EXPECT_EQ(decode(Element::e4m3, 0x7E), 448.0f);
  EXPECT_EQ(decode(Element::e4m3, 0x78), 256.0f);
  EXPECT_EQ(decode(Element::e5m2, 0x7C), std::numeric_limits<float>::infinity());
  EXPECT_EQ(decode(Element::e5m2, 0xFC), -std::numeric_limits<float>::infinity());
  for (std::uint32_t c : {0x7Du, 0x7Eu, 0x7Fu}) EXPECT_TRUE(std::isnan(decode(Element::e5m2, c)));
  EXPECT_TRUE(std::isnan(decode(Element::e8m0, 0xFF)));
  EXPECT_EQ(decode(Element::e8m0, 127), 1.0f);
  EXPECT_EQ(decode(Element::e8m0, 0), std::ldexp(1.0f, -127));
  EXPECT_EQ(decode(Element::e8m0, 254), std::ldexp(1.0f, 127));
  // e2m1: +-[0, 0.5, 1, 1.5, 2, 3, 4, 6].
  const float e2m1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (std::uint32_t c = 0; c < 8; ++c) {
    EXPECT_EQ(decode(Element::e2m1, c), e2m1[c]);
    EXPECT_EQ(decode(Element::e2m1, c | 8), -e2m1[c]);
  }
  // MX int8/int4: two's complement k / 64 and k / 4.
  EXPECT_EQ(decode(Element::mx_int8, 0x7F), 127.0f / 64);
  EXPECT_EQ(decode(Element::mx_int8, 0x81), -127.0f / 64);
  EXPECT_EQ(decode(Element::mx_int4, 0x7), 7.0f / 4);
  EXPECT_EQ(decode(Element::mx_int4, 0x9), -7.0f / 4);
}

// Every code decodes and re-encodes to itself (NaN codes aside), in both rounding modes.
TEST(Element, EveryCodeRoundTrips) {
  for (const ElementInfo& info : all_elements()) {
    SCOPED_TRACE(std::string(info.name));
    for (std::uint32_t code = 0; code < code_count(info.element); ++code) {
      if (is_nan_code(info.element, code) || is_unused_int_code(info.element, code)) continue;
      const float v = decode(info.element, code);
      for (Rounding mode : kModes) ASSERT_EQ(encode(info.element, v, mode), code) << "code " << code << " value " << v;
    }
  }
}

TEST(Element, UnusedIntegerCodeIsNeverProduced) {
  for (Element e : {Element::mx_int8, Element::mx_int4, Element::int4, Element::int8}) {
    const float lowest = decode(e, sign_bit(e));  // -2^(bits-1) * step
    EXPECT_LT(lowest, -element_info(e).max_value);
    EXPECT_EQ(encode(e, lowest), sign_bit(e) + 1) << "saturates to -(2^(bits-1) - 1)";
  }
}

// The non-negative finite values of an element, sorted, with their codes.
struct GridPoint {
  double value;
  std::uint32_t code;
};
std::vector<GridPoint> grid(Element e) {
  std::vector<GridPoint> points;
  for (std::uint32_t code = 0; code < code_count(e); ++code) {
    if (is_nan_code(e, code) || is_unused_int_code(e, code)) continue;
    const float v = decode(e, code);
    if (std::isinf(v) || v < 0 || std::signbit(v)) continue;
    points.push_back({double(v), code});
  }
  std::sort(points.begin(), points.end(), [](auto& a, auto& b) { return a.value < b.value; });
  return points;
}

std::uint32_t negate_code(Element e, std::uint32_t code) {
  if (is_integer_element(e)) return (code_count(e) - code) & (code_count(e) - 1);
  return code | sign_bit(e);
}

// Every midpoint between neighbours rounds as the contract says: ties to the even code (its last
// mantissa bit, or k even for integers) or away from zero; just off the midpoint, to the nearer one.
TEST(Element, EveryMidpointRoundsAsTheContractSays) {
  for (const ElementInfo& info : all_elements()) {
    const Element e = info.element;
    SCOPED_TRACE(std::string(info.name));
    const std::vector<GridPoint> g = grid(e);
    ASSERT_GT(g.size(), 2u);
    for (std::size_t i = 0; i + 1 < g.size(); ++i) {
      const GridPoint lo = g[i], hi = g[i + 1];
      const float mid = static_cast<float>((lo.value + hi.value) / 2);
      ASSERT_EQ(double(mid), (lo.value + hi.value) / 2) << "midpoint not exact in fp32";
      // e8m0 has no mantissa bit to be even: like ml_dtypes, its ties go to the larger power of two.
      const std::uint32_t even = e == Element::e8m0 ? hi.code : ((lo.code & 1u) == 0 ? lo.code : hi.code);
      ASSERT_EQ(encode(e, mid, Rounding::nearest_even), even) << "between " << lo.value << " and " << hi.value;
      ASSERT_EQ(encode(e, mid, Rounding::nearest_away), hi.code) << "between " << lo.value << " and " << hi.value;
      const float below = std::nextafter(mid, 0.0f), above = std::nextafter(mid, INFINITY);
      for (Rounding mode : kModes) {
        ASSERT_EQ(encode(e, below, mode), lo.code) << below;
        ASSERT_EQ(encode(e, above, mode), hi.code) << above;
        if (e != Element::e8m0) {
          ASSERT_EQ(encode(e, -below, mode), negate_code(e, lo.code)) << -below;
          ASSERT_EQ(encode(e, -above, mode), negate_code(e, hi.code)) << -above;
        }
      }
      if (e != Element::e8m0) {
        ASSERT_EQ(encode(e, -mid, Rounding::nearest_even), negate_code(e, even));
        ASSERT_EQ(encode(e, -mid, Rounding::nearest_away), negate_code(e, hi.code));
      }
    }
  }
}

TEST(Element, FiniteValuesBeyondMaxSaturate) {
  for (const ElementInfo& info : all_elements()) {
    if (info.element == Element::e8m0) continue;  // unsigned: tested below
    SCOPED_TRACE(std::string(info.name));
    const std::uint32_t max_code = encode(info.element, info.max_value);
    ASSERT_EQ(decode(info.element, max_code), info.max_value);
    for (float x : {info.max_value * 1.0001f, info.max_value * 1.5f, info.max_value * 2.0f, 1e30f,
                    std::numeric_limits<float>::max()}) {
      if (x <= info.max_value || std::isinf(x)) continue;  // bf16 max * 1.5 overflows fp32 itself
      for (Rounding mode : kModes) {
        EXPECT_EQ(decode(info.element, encode(info.element, x, mode)), info.max_value) << x;
        EXPECT_EQ(decode(info.element, encode(info.element, -x, mode)), -info.max_value) << -x;
      }
    }
    const float inf = std::numeric_limits<float>::infinity();
    const float expected_inf = info.has_inf ? inf : info.max_value;
    EXPECT_EQ(decode(info.element, encode(info.element, inf)), expected_inf);
    EXPECT_EQ(decode(info.element, encode(info.element, -inf)), -expected_inf);
    const float nan_back = decode(info.element, encode(info.element, std::numeric_limits<float>::quiet_NaN()));
    if (info.has_nan) EXPECT_TRUE(std::isnan(nan_back));
    else EXPECT_EQ(nan_back, 0.0f) << "no NaN code: NaN encodes as 0 (MX carries NaN in the scale)";
  }
}

TEST(Element, SubnormalsAndZeros) {
  for (const ElementInfo& info : all_elements()) {
    const Element e = info.element;
    if (e == Element::e8m0) continue;
    SCOPED_TRACE(std::string(info.name));
    const float tiny = info.min_subnormal;
    EXPECT_EQ(round_to_element(e, tiny), tiny);
    EXPECT_EQ(round_to_element(e, tiny * 0.5f, Rounding::nearest_even), 0.0f) << "tie with 0 goes to even 0";
    EXPECT_EQ(round_to_element(e, tiny * 0.5f, Rounding::nearest_away), tiny);
    EXPECT_EQ(round_to_element(e, tiny * 0.49f), 0.0f);
    EXPECT_EQ(round_to_element(e, tiny * 0.51f), tiny);
    EXPECT_EQ(round_to_element(e, tiny * 1.5f, Rounding::nearest_even), 2 * tiny);
    EXPECT_EQ(encode(e, 0.0f), 0u);
    const float neg_zero = round_to_element(e, -0.0f);
    const float neg_underflow = round_to_element(e, -tiny * 0.25f);
    EXPECT_EQ(neg_zero, 0.0f);
    if (is_integer_element(e)) {
      EXPECT_EQ(encode(e, -0.0f), 0u) << "two's complement has no -0";
      EXPECT_FALSE(std::signbit(neg_zero));
    } else {
      EXPECT_EQ(encode(e, -0.0f), sign_bit(e)) << "-0 is produced";
      EXPECT_TRUE(std::signbit(neg_zero)) << "and decodes to -0";
      EXPECT_TRUE(std::signbit(neg_underflow));
    }
  }
}

TEST(Element, E8m0ClampsAtBothEnds) {
  EXPECT_EQ(encode(Element::e8m0, std::ldexp(1.0f, -127)), 0u);
  EXPECT_EQ(encode(Element::e8m0, std::ldexp(1.0f, -140)), 0u);
  EXPECT_EQ(encode(Element::e8m0, std::numeric_limits<float>::denorm_min()), 0u);
  EXPECT_EQ(encode(Element::e8m0, 0.0f), 0u);
  EXPECT_EQ(encode(Element::e8m0, std::ldexp(1.0f, 127)), 254u);
  EXPECT_EQ(encode(Element::e8m0, std::numeric_limits<float>::max()), 254u);
  EXPECT_EQ(encode(Element::e8m0, std::numeric_limits<float>::infinity()), 0xFFu);
  EXPECT_EQ(encode(Element::e8m0, -1.0f), 0xFFu) << "the scale has no sign";
  EXPECT_EQ(encode(Element::e8m0, 1.0f), 127u);
  // fp32 subnormals round to the nearest power of two like any other value (ml_dtypes 0.6 rounds all
  // of (2^-127, 2^-126) up to 2^-126; the contract does not).
  EXPECT_EQ(encode(Element::e8m0, std::ldexp(1.2f, -127)), 0u);
  EXPECT_EQ(encode(Element::e8m0, std::ldexp(1.6f, -127)), 1u);
}

// fp16 against the compiler's own _Float16 conversion (round to nearest even), on every fp16 value,
// every midpoint and a sweep of the fp32 range; loraq saturates where _Float16 overflows to Inf.
TEST(Element, Fp16AgreesWithCompilerFloat16) {
  std::uint32_t state = 12345;
  auto next = [&] { return state = state * 1664525u + 1013904223u; };
  for (int i = 0; i < 1000000; ++i) {
    const float x = std::bit_cast<float>(next());
    if (std::isnan(x)) continue;
    const auto h = static_cast<_Float16>(x);
    const float expected = std::isinf(float(h)) && !std::isinf(x) ? std::copysign(65504.0f, x) : float(h);
    ASSERT_EQ(std::bit_cast<std::uint32_t>(round_to_element(Element::fp16, x)), std::bit_cast<std::uint32_t>(expected))
        << "x = " << x << " seed 12345, draw " << i;
  }
}

}  // namespace
}  // namespace loraq
