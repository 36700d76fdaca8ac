// Block formats against ../shared/FORMATS.md: the table, scale rules, special blocks, partial
// blocks, rounding option, packing layout, and pack/unpack == fake_quantize.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "loraq/error.hpp"
#include "loraq/format.hpp"

namespace loraq {
namespace {

const QuantOptions kScalar{Rounding::nearest_even, Isa::scalar, 1};
QuantOptions scalar(Rounding r) { return {r, Isa::scalar, 1}; }

std::vector<float> fq(Format f, const std::vector<float>& x, std::int64_t rows, std::int64_t cols,
                      const QuantOptions& o = kScalar) {
  std::vector<float> out(x.size());
  fake_quantize(f, x, out, rows, cols, o);
  return out;
}
std::vector<float> fq_row(Format f, const std::vector<float>& x, const QuantOptions& o = kScalar) {
  return fq(f, x, 1, std::int64_t(x.size()), o);
}
bool same_bits(float a, float b) { return std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(b); }

TEST(FormatTable, MatchesTheContract) {
  struct Row {
    const char* name;
    Element element;
    int block;
    ScaleType scale;
    double bits;  // element bits + scale bits / block
  };
  const Row rows[] = {
      {"mxfp8_e4m3", Element::e4m3, 32, ScaleType::e8m0, 8.25}, {"mxfp8_e5m2", Element::e5m2, 32, ScaleType::e8m0, 8.25},
      {"mxfp6_e2m3", Element::e2m3, 32, ScaleType::e8m0, 6.25}, {"mxfp6_e3m2", Element::e3m2, 32, ScaleType::e8m0, 6.25},
      {"mxfp4", Element::e2m1, 32, ScaleType::e8m0, 4.25},      {"mxint8", Element::mx_int8, 32, ScaleType::e8m0, 8.25},
      {"mxint4", Element::mx_int4, 32, ScaleType::e8m0, 4.25},  {"sint4", Element::int4, 64, ScaleType::fp16, 4.25},
      {"nvfp4", Element::e2m1, 16, ScaleType::e4m3, 4.5},       {"int8_channel", Element::int8, 0, ScaleType::fp32, 8},
      {"fp16", Element::fp16, 1, ScaleType::none, 16},          {"bf16", Element::bf16, 1, ScaleType::none, 16},
  };
  ASSERT_EQ(all_formats().size(), std::size(rows));
  for (const Row& r : rows) {
    const Format f = parse_format(r.name);
    const FormatInfo& info = format_info(f);
    SCOPED_TRACE(r.name);
    EXPECT_EQ(info.name, r.name);
    EXPECT_EQ(info.element, r.element);
    EXPECT_EQ(info.block_size, r.block);
    EXPECT_EQ(info.scale, r.scale);
    EXPECT_DOUBLE_EQ(nominal_bits_per_value(f), r.bits);
  }
  EXPECT_EQ(parse_format("mxfp4_e2m1"), Format::mxfp4);
  EXPECT_TRUE(format_info(Format::nvfp4).tensor_scale);
}

TEST(FormatTable, UnknownNameListsTheKnownOnes) {
  try {
    parse_format("mxfp3");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mxfp3"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("mxint8"), std::string::npos);
  }
}

TEST(FormatTable, BitsPerValueCountsPaddingAndScales) {
  // rank 86: three mxfp4 blocks (the last one of 22 values, padded to 32 in storage), three scales.
  EXPECT_DOUBLE_EQ(bits_per_value(Format::mxfp4, 86), (3 * 32 * 4 + 3 * 8) / 86.0);
  EXPECT_DOUBLE_EQ(bits_per_value(Format::mxfp6_e2m3, 86), (3 * 32 * 6 + 3 * 8) / 86.0);
  EXPECT_DOUBLE_EQ(bits_per_value(Format::sint4, 1152), 4 + 16.0 / 64);
  EXPECT_DOUBLE_EQ(bits_per_value(Format::int8_channel, 4608), 8 + 32.0 / 4608);
  EXPECT_DOUBLE_EQ(bits_per_value(Format::nvfp4, 1152), 4.5);
  EXPECT_EQ(packed_row_bytes(Format::mxfp6_e3m2, 33), 48);
  EXPECT_EQ(packed_row_bytes(Format::int8_channel, 33), 33);
  EXPECT_EQ(packed_row_bytes(Format::bf16, 33), 66);
}

// FORMATS.md MX step 4: shared_exp = floor(log2(amax)) - emax, read from the exponent bits.
TEST(MxScale, SharedExponentFromAmaxBits) {
  // mxfp4 (emax 2): amax 1 -> shared_exp -2 -> elements scaled by 4: 0.25 -> 1 exactly.
  auto out = fq_row(Format::mxfp4, {1.0f, 0.25f, 0.375f, -0.5f});
  EXPECT_EQ(out, (std::vector<float>{1.0f, 0.25f, 0.375f, -0.5f}));
  // amax just below 2: floor(log2) = 0 (a float log2 would round to 1); the grid step near 1.9999 is
  // 0.5 * 2^-2 * 4 = 0.5, so 1.9999999 saturates to 1.5 (e2m1 max 6 -> 6 * 2^-2 = 1.5).
  const float below_two = std::nextafter(2.0f, 0.0f);
  out = fq_row(Format::mxfp4, {below_two});
  EXPECT_EQ(out[0], 1.5f);
  PackedMatrix p = pack(Format::mxfp4, std::vector<float>{below_two}, 1, 1, kScalar);
  EXPECT_EQ(p.scales[0], 127 - 2) << "2^(0 - 2)";
  p = pack(Format::mxfp4, std::vector<float>{2.0f}, 1, 1, kScalar);
  EXPECT_EQ(p.scales[0], 127 - 1) << "2^(1 - 2)";
  // mxint8 (emax 0): amax 100 -> floor log2 = 6 -> step 2^6 / 64 = 1: integers up to 127 exact.
  out = fq_row(Format::mxint8, {100.0f, 3.0f, -77.0f, 0.5f, 1.5f});
  EXPECT_EQ(out, (std::vector<float>{100.0f, 3.0f, -77.0f, 0.0f, 2.0f}));
}

TEST(MxScale, E8m0ClampsAtBothEnds) {
  // Low end: amax = 2^-140 would need shared_exp -142 (mxint8); clamped to -127, code 0. Values are
  // then k/64 * 2^-127: 2^-140 rounds to 0, while 2^-133 = 1/64 * 2^-127 survives exactly.
  const float tiny = std::ldexp(1.0f, -140);
  PackedMatrix p = pack(Format::mxint8, std::vector<float>{tiny}, 1, 1, kScalar);
  EXPECT_EQ(p.scales[0], 0);
  EXPECT_EQ(fq_row(Format::mxint8, {tiny})[0], 0.0f);
  EXPECT_EQ(fq_row(Format::mxint8, {std::ldexp(1.0f, -133)})[0], std::ldexp(1.0f, -133));
  // A subnormal amax counts with its true exponent: 2^-149 (denorm_min) -> clamped as well.
  p = pack(Format::mxfp8_e4m3, std::vector<float>{std::numeric_limits<float>::denorm_min()}, 1, 1, kScalar);
  EXPECT_EQ(p.scales[0], 0);
  // High end: the largest fp32 gives shared_exp 127 - 0 = 127 for mxint8 (code 254), values exact.
  const float big = std::ldexp(1.5f, 127);
  p = pack(Format::mxint8, std::vector<float>{big}, 1, 1, kScalar);
  EXPECT_EQ(p.scales[0], 254);
  EXPECT_EQ(fq_row(Format::mxint8, {big})[0], big);
  EXPECT_EQ(fq_row(Format::mxint8, {std::numeric_limits<float>::max()})[0], std::ldexp(127.0f / 64, 127))
      << "FLT_MAX saturates to the largest mxint8 value at scale 2^127";
}

TEST(MxScale, ZeroAndNonFiniteBlocks) {
  for (Format f : {Format::mxfp8_e4m3, Format::mxfp8_e5m2, Format::mxfp6_e2m3, Format::mxfp6_e3m2, Format::mxfp4,
                   Format::mxint8, Format::mxint4}) {
    SCOPED_TRACE(std::string(format_info(f).name));
    std::vector<float> row(64, 0.0f);
    row[3] = -0.0f;
    for (int i = 32; i < 64; ++i) row[i] = 0.1f * float(i - 40);
    row[40] = std::numeric_limits<float>::quiet_NaN();
    const PackedMatrix p = pack(f, row, 1, 64, kScalar);
    EXPECT_EQ(p.scales[0], 0) << "zero block: scale code 0";
    EXPECT_EQ(p.scales[1], 0xFF) << "NaN block: scale code 0xFF";
    const std::size_t half = p.codes.size() / 2;
    for (std::size_t i = 0; i < half; ++i) EXPECT_EQ(p.codes[i], 0);
    const std::vector<float> out = fq_row(f, row);
    for (int i = 0; i < 32; ++i) EXPECT_TRUE(same_bits(out[i], 0.0f)) << i;
    for (int i = 32; i < 64; ++i) EXPECT_TRUE(std::isnan(out[i])) << i;
    row[40] = std::numeric_limits<float>::infinity();
    EXPECT_TRUE(std::isnan(fq_row(f, row)[33]));
  }
}

TEST(BlockFormats, RoundingOption) {
  // mxfp4 with amax 4 (shared_exp 0): 2.5 lies between e2m1's 2 and 3.
  EXPECT_EQ(fq_row(Format::mxfp4, {4.0f, 2.5f}, scalar(Rounding::nearest_even))[1], 2.0f);
  EXPECT_EQ(fq_row(Format::mxfp4, {4.0f, 2.5f}, scalar(Rounding::nearest_away))[1], 3.0f);
  EXPECT_EQ(fq_row(Format::mxfp4, {4.0f, -2.5f}, scalar(Rounding::nearest_away))[1], -3.0f);
  // sint4 with amax 7 (scale 1): 2.5 -> 2 or 3; int8_channel with amax 127 (scale 1): 0.5 -> 0 or 1.
  std::vector<float> g(64, 0.0f);
  g[0] = 7.0f, g[1] = 2.5f, g[2] = -3.5f;
  EXPECT_EQ(fq_row(Format::sint4, g, scalar(Rounding::nearest_even))[1], 2.0f);
  EXPECT_EQ(fq_row(Format::sint4, g, scalar(Rounding::nearest_even))[2], -4.0f);
  EXPECT_EQ(fq_row(Format::sint4, g, scalar(Rounding::nearest_away))[1], 3.0f);
  EXPECT_EQ(fq_row(Format::int8_channel, {127.0f, 0.5f, 1.5f}, scalar(Rounding::nearest_even))[1], 0.0f);
  EXPECT_EQ(fq_row(Format::int8_channel, {127.0f, 0.5f, 1.5f}, scalar(Rounding::nearest_even))[2], 2.0f);
  EXPECT_EQ(fq_row(Format::int8_channel, {127.0f, 0.5f, 1.5f}, scalar(Rounding::nearest_away))[1], 1.0f);
}

// sint4 checked against the compiler's _Float16 for the fp16 scale rounding.
TEST(BlockFormats, Sint4ScaleIsFp16OfAmaxOverSeven) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> x(64 * 3);
  for (float& v : x) v = normal(rng);
  const std::vector<float> out = fq_row(Format::sint4, x);
  for (int b = 0; b < 3; ++b) {
    float amax = 0;
    for (int i = 0; i < 64; ++i) amax = std::max(amax, std::fabs(x[b * 64 + i]));
    const float scale = float(static_cast<_Float16>(amax / 7.0f));
    for (int i = 0; i < 64; ++i) {
      const float q = std::nearbyint(x[b * 64 + i] / scale);  // default FE_TONEAREST: ties to even
      const float expected = std::clamp(q, -7.0f, 7.0f) * scale;
      ASSERT_EQ(out[b * 64 + i], expected) << "block " << b << " index " << i << " seed 7";
    }
  }
}

TEST(BlockFormats, Nvfp4FollowsTheTwoLevelScale) {
  // Tensor amax 2688 -> global 1. Block 0 amax 6 -> block scale e4m3(1) = 1: e2m1 values exact.
  std::vector<float> x(32, 0.0f);
  x[0] = 6.0f, x[1] = 2.5f, x[2] = -1.5f, x[16] = 2688.0f, x[17] = 100.0f;
  const std::vector<float> out = fq_row(Format::nvfp4, x, scalar(Rounding::nearest_even));
  EXPECT_EQ(out[0], 6.0f);
  EXPECT_EQ(out[1], 2.0f) << "2.5 ties to even e2m1 2";
  EXPECT_EQ(out[2], -1.5f);
  // Block 1: amax 2688 / 6 = 448 -> scale 448, element 100 / 448 = 0.2232 -> 0 (below 0.25).
  EXPECT_EQ(out[16], 2688.0f);
  EXPECT_EQ(out[17], 0.0f);
  const PackedMatrix p = pack(Format::nvfp4, x, 1, 32, kScalar);
  EXPECT_EQ(p.tensor_scale, 1.0f);
  EXPECT_EQ(p.scales[0], 0x38) << "e4m3 1.0 = 0.0111.000";
  EXPECT_EQ(p.scales[1], 0x7E) << "e4m3 448";
}

TEST(BlockFormats, PartialLastBlockIsItsOwnBlock) {
  std::mt19937 rng(86);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> row(86);
  for (float& v : row) v = normal(rng);
  row[70] = 40.0f;  // the partial block's amax differs from the others
  for (const FormatInfo& info : all_formats()) {
    if (info.block_size <= 1) continue;
    SCOPED_TRACE(std::string(info.name));
    const std::vector<float> whole = fq_row(info.format, row);
    const int b = info.block_size;
    const int last_start = (86 / b) * b;
    if (last_start == 86 || info.tensor_scale) continue;
    const std::vector<float> tail(row.begin() + last_start, row.end());
    const std::vector<float> tail_alone = fq_row(info.format, tail);
    for (std::size_t i = 0; i < tail.size(); ++i) ASSERT_TRUE(same_bits(whole[last_start + i], tail_alone[i])) << i;
  }
}

TEST(Packing, DocumentedLayout) {
  // mxfp4, amax 4 (shared_exp 0): 0.5 -> code 1 (low nibble of byte 0), 1.0 -> code 2 (high nibble).
  std::vector<float> x = {0.5f, 1.0f, 4.0f, -6.0f};
  PackedMatrix p = pack(Format::mxfp4, x, 1, 4, kScalar);
  ASSERT_EQ(p.codes.size(), 16u) << "rows padded to a whole block of 32 codes";
  EXPECT_EQ(p.codes[0], 0x21);
  EXPECT_EQ(p.codes[1], 0xF6) << "4.0 = 0.11.0 (6), -6.0 = 1.11.1 (0xF)";
  EXPECT_EQ(p.scales[0], 127);
  // mxfp6_e2m3, amax 4: 0.125 (1), 0.25 (2), 0.375 (3), 4.0 (0.11.000 = 24) in one 24-bit LE word.
  x = {0.125f, 0.25f, 0.375f, 4.0f};
  p = pack(Format::mxfp6_e2m3, x, 1, 4, kScalar);
  const std::uint32_t word = 1 | (2 << 6) | (3 << 12) | (24u << 18);
  ASSERT_EQ(p.codes.size(), 24u);
  EXPECT_EQ(p.codes[0], word & 0xFF);
  EXPECT_EQ(p.codes[1], (word >> 8) & 0xFF);
  EXPECT_EQ(p.codes[2], (word >> 16) & 0xFF);
  // sint4 scale is a little-endian fp16: amax 7 -> 1.0 = 0x3C00.
  std::vector<float> g(64, 0.0f);
  g[0] = 7.0f, g[1] = -7.0f;
  p = pack(Format::sint4, g, 1, 64, kScalar);
  EXPECT_EQ(p.scales[0], 0x00);
  EXPECT_EQ(p.scales[1], 0x3C);
  EXPECT_EQ(p.codes[0], 0x97) << "7 low nibble, -7 = 0b1001 high nibble";
}

TEST(Packing, UnpackEqualsFakeQuantizeForEveryFormat) {
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const FormatInfo& info : all_formats()) {
    for (std::int64_t cols : {1, 5, 16, 31, 32, 33, 64, 86, 200}) {
      const std::int64_t rows = 3;
      std::vector<float> x(std::size_t(rows * cols));
      for (float& v : x) v = normal(rng) * std::ldexp(1.0f, int(rng() % 9) - 4);
      for (Rounding mode : {Rounding::nearest_even, Rounding::nearest_away}) {
        const QuantOptions o = scalar(mode);
        const std::vector<float> expected = fq(info.format, x, rows, cols, o);
        std::vector<float> back(x.size());
        unpack(pack(info.format, x, rows, cols, o), back, o);
        for (std::size_t i = 0; i < x.size(); ++i)
          ASSERT_TRUE(same_bits(back[i], expected[i])) << info.name << " cols " << cols << " i " << i << " seed 2024";
      }
    }
  }
}

TEST(BlockFormats, FakeQuantizeIsIdempotentAndBounded) {
  // Quantizing a quantized MX block again gives the same values; the error is at most half a step.
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(32 * 40);
  for (float& v : x) v = normal(rng);
  for (Format f : {Format::mxfp8_e4m3, Format::mxfp6_e2m3, Format::mxfp4, Format::mxint8, Format::mxint4}) {
    const std::vector<float> once = fq(f, x, 40, 32);
    EXPECT_EQ(fq(f, once, 40, 32), once) << format_info(f).name;
  }
}

TEST(BlockFormats, BadShapesAreErrors) {
  std::vector<float> x(10), y(10);
  EXPECT_THROW(fake_quantize(Format::mxfp4, x, y, 3, 4), Error);
  EXPECT_THROW(fake_quantize(Format::mxfp4, x, y, -1, 4), Error);
  PackedMatrix p = pack(Format::mxfp4, x, 2, 5);
  p.codes.pop_back();
  EXPECT_THROW(unpack(p, y), Error);
}

}  // namespace
}  // namespace loraq

#include "core/block_scales.hpp"
#include "core/element_codec.hpp"

namespace loraq {
namespace {

// The vectorized codecs take their fp16 and e4m3 block scales from fast scalar functions; the
// reference derives them with the element codec. They agree on every fp16 grid point and midpoint
// (times 7, the sint4 divisor) and on a million log-uniform magnitudes.
TEST(FastScales, AgreeWithTheElementCodec) {
  std::vector<float> amax;
  for (std::uint32_t code = 1; code < 0x7BFF; ++code) {  // finite neighbours only
    const float v = detail::FP16::decode(code), next = detail::FP16::decode(code + 1);
    for (float x : {v, (v + next) / 2, std::nextafter((v + next) / 2, 0.0f), std::nextafter((v + next) / 2, 1e30f)})
      amax.push_back(x * 7.0f);
  }
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> exponent(-40.0f, 40.0f);
  for (int i = 0; i < 1000000; ++i) amax.push_back(std::exp2(exponent(rng)));
  amax.push_back(0.0f);
  amax.push_back(std::numeric_limits<float>::max());
  for (std::uint32_t code = 0; code < 0x10000; ++code) {
    const float fast = detail::fp16_value(static_cast<std::uint16_t>(code)), exact = detail::FP16::decode(code);
    ASSERT_TRUE(std::bit_cast<std::uint32_t>(fast) == std::bit_cast<std::uint32_t>(exact) || (std::isnan(fast) && std::isnan(exact)))
        << "fp16 code " << code;
  }
  for (std::uint32_t code = 0; code < 0x100; ++code) {
    const float fast = detail::e4m3_value(static_cast<std::uint8_t>(code)), exact = detail::E4M3::decode(code);
    ASSERT_TRUE(std::bit_cast<std::uint32_t>(fast) == std::bit_cast<std::uint32_t>(exact) || (std::isnan(fast) && std::isnan(exact)))
        << "e4m3 code " << code;
  }
  for (float a : amax) {
    ASSERT_EQ(detail::sint4_scale_code(a), detail::FP16::encode(a / 7.0f, Rounding::nearest_even)) << a;
    for (float global : {1.0f, 0.37f, 1e-30f, 3e25f})
      ASSERT_EQ(detail::nvfp4_block_scale_code(a, global), detail::E4M3::encode(a / 6.0f / global, Rounding::nearest_even))
          << a << " / " << global;
  }
}

}  // namespace
}  // namespace loraq
