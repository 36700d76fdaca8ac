// The vectorized codecs are bit-identical to the scalar reference: fake quantization values and packed
// bytes, both rounding modes, sizes below, at and above one vector width and one block, partial
// blocks, and inputs full of ties, subnormals, zeros of both signs, huge values, NaN and Inf blocks.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "loraq/format.hpp"

namespace loraq {
namespace {

// Inputs that exercise the corners: exact grid midpoints (small integers and halves times powers of
// two), subnormal and huge magnitudes, zero blocks, and a few non-finite values.
std::vector<float> hostile_input(std::size_t n, std::uint32_t seed, bool with_non_finite) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) {
    switch (rng() % 8) {
      case 0: x[i] = float(int(rng() % 33) - 16) * 0.5f * std::ldexp(1.0f, int(rng() % 7) - 3); break;  // ties
      case 1: x[i] = normal(rng) * std::ldexp(1.0f, int(rng() % 60) - 30); break;
      case 2: x[i] = std::bit_cast<float>(static_cast<std::uint32_t>((rng() % 0x800000u) | (rng() & 0x80000000u))); break;  // subnormal
      case 3: x[i] = normal(rng) * 1e37f; break;
      case 4: x[i] = rng() % 2 ? -0.0f : 0.0f; break;  // -0 must come out as the reference makes it
      default: x[i] = normal(rng); break;
    }
  }
  if (n >= 96) std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // a zero block
  if (with_non_finite && n > 100) {
    x[rng() % n] = std::numeric_limits<float>::quiet_NaN();
    x[rng() % n] = -std::numeric_limits<float>::infinity();
  }
  return x;
}

// Fake quantization values (bits) and packed bytes of x [rows, cols] with `isa` on `threads` threads
// against the scalar reference on one; `where` names the case in a failure.
void expect_reference_bits(Format f, const std::vector<float>& x, std::int64_t rows, std::int64_t cols, Isa isa,
                           Rounding mode, int threads, const std::string& where) {
  std::vector<float> want(x.size()), got(x.size());
  fake_quantize(f, x, want, rows, cols, {mode, Isa::scalar, 1});
  fake_quantize(f, x, got, rows, cols, {mode, isa, threads});
  for (std::size_t i = 0; i < x.size(); ++i)
    ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
        << where << " index " << i << " x = " << x[i];
  const PackedMatrix pw = pack(f, x, rows, cols, {mode, Isa::scalar, 1});
  const PackedMatrix pg = pack(f, x, rows, cols, {mode, isa, threads});
  ASSERT_EQ(pg.codes, pw.codes) << where;
  ASSERT_EQ(pg.scales, pw.scales) << where;
}

// rows x cols normal values in blocks of 64, each block scaled by magnitude(block).
template <class Magnitude>
std::vector<float> blocks_at_magnitudes(std::int64_t rows, std::int64_t cols, std::uint32_t seed, Magnitude&& magnitude) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(std::size_t(rows * cols));
  for (std::int64_t block = 0; block < rows * cols / 64; ++block) {
    const float m = magnitude(block, rng);
    for (int i = 0; i < 64; ++i) x[std::size_t(block * 64 + i)] = normal(rng) * m;
  }
  return x;
}

class SimdMatchesReference : public ::testing::TestWithParam<Isa> {};

TEST_P(SimdMatchesReference, BitIdentical) {
  const Isa isa = GetParam();
  if (!isa_available(isa))
    GTEST_SKIP() << "SKIPPED LOUDLY: this CPU lacks " << isa_name(isa) << ": its codec was compiled but not run here";
  const std::int64_t sizes[] = {1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 86, 96, 127, 128, 129, 1000, 1152};
  std::uint32_t seed = 1;
  for (const FormatInfo& info : all_formats()) {
    for (std::int64_t cols : sizes) {
      for (std::int64_t rows : {1, 3}) {
        for (Rounding mode : {Rounding::nearest_even, Rounding::nearest_away}) {
          ++seed;
          const bool non_finite = !info.tensor_scale || seed % 2 == 0;
          const std::vector<float> x = hostile_input(std::size_t(rows * cols), seed, non_finite);
          const QuantOptions reference{mode, Isa::scalar, 1};
          const QuantOptions fast{mode, isa, 2};
          std::vector<float> want(x.size()), got(x.size());
          fake_quantize(info.format, x, want, rows, cols, reference);
          fake_quantize(info.format, x, got, rows, cols, fast);
          const std::string where = std::string(info.name) + " " + std::to_string(rows) + "x" + std::to_string(cols) +
                                    (mode == Rounding::nearest_away ? " ties-away" : " ties-even") + " seed " +
                                    std::to_string(seed);
          for (std::size_t i = 0; i < x.size(); ++i)
            ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
                << where << " index " << i << " x = " << x[i] << " want " << want[i] << " got " << got[i];
          const PackedMatrix pw = pack(info.format, x, rows, cols, reference);
          const PackedMatrix pg = pack(info.format, x, rows, cols, fast);
          ASSERT_EQ(pg.codes, pw.codes) << where;
          ASSERT_EQ(pg.scales, pw.scales) << where;
          ASSERT_EQ(std::bit_cast<std::uint32_t>(pg.tensor_scale), std::bit_cast<std::uint32_t>(pw.tensor_scale)) << where;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, SimdMatchesReference, ::testing::Values(Isa::avx2, Isa::avx512),
                         [](const auto& p) { return std::string(isa_name(p.param)); });

// Outputs of 8 MiB and more are written with streaming stores: still the reference's values.
TEST(SimdLargeOutputs, StreamedStoresMatchReference) {
  const std::int64_t rows = 2048, cols = 1152;  // 9.4 MB of fp32
  std::vector<float> x = hostile_input(std::size_t(rows * cols), 77, false);
  float* aligned = nullptr;  // a 64-byte aligned output, so that the streaming path is taken
  std::vector<float> storage(std::size_t(rows * cols) + 16);
  aligned = storage.data() + (16 - (reinterpret_cast<std::uintptr_t>(storage.data()) % 64) / 4) % 16;
  const std::span<float> got(aligned, std::size_t(rows * cols));
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!isa_available(isa)) continue;
    for (Format f : {Format::mxfp4, Format::mxint8, Format::sint4, Format::nvfp4, Format::fp16}) {
      std::vector<float> want(x.size());
      fake_quantize(f, x, want, rows, cols, {Rounding::nearest_even, Isa::scalar, 2});
      fake_quantize(f, x, got, rows, cols, {Rounding::nearest_even, isa, 2});
      for (std::size_t i = 0; i < x.size(); ++i)
        ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
            << format_info(f).name << " " << isa_name(isa) << " index " << i << " seed 77";
    }
  }
}

// sint4's vector path multiplies by the step's reciprocal and sends blocks with a value near a tie to
// the dividing path (codec_kernels.hpp, sint4_block_by_reciprocal). Blocks here have a known step s
// (amax = 7 s, s an fp16 value, so the step is s exactly) and values at (k + 1/2) s and 1 to 3 ulps on
// either side, where the quotient the reference rounds can land on the tie itself; other blocks are
// ordinary values with a single near-tie among them, and the rest are ordinary (the fast path).
TEST(SimdSint4, TiesAndNearTiesMatchReference) {
  std::mt19937 rng(2026);
  const std::int64_t rows = 64, cols = 1152;
  std::vector<float> x(std::size_t(rows * cols));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t block = 0; block < rows * cols / 64; ++block) {
    float* b = x.data() + block * 64;
    const float s = std::ldexp(1.0f + float(rng() % 1024) / 1024.0f, int(rng() % 30) - 20);  // fp16-exact
    const int kind = int(block % 3);
    for (int i = 0; i < 64; ++i) {
      if (kind == 2) {
        b[i] = normal(rng) * s * 2.5f;
        continue;
      }
      const float tie = (float(int(rng() % 15) - 7) + 0.5f) * s;
      float v = tie;
      for (int ulps = int(rng() % 7) - 3; ulps != 0; ulps += ulps > 0 ? -1 : 1)
        v = std::nextafter(v, ulps > 0 ? INFINITY : -INFINITY);
      b[i] = kind == 0 || i == 17 ? v : normal(rng) * s * 2.5f;
    }
    if (kind != 2) b[int(rng() % 64)] = (rng() % 2 ? 7.0f : -7.0f) * s;  // the block's amax
  }
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!isa_available(isa)) continue;
    for (Rounding mode : {Rounding::nearest_even, Rounding::nearest_away})
      ASSERT_NO_FATAL_FAILURE(expect_reference_bits(
          Format::sint4, x, rows, cols, isa, mode, 2,
          std::string(isa_name(isa)) + (mode == Rounding::nearest_away ? " ties-away" : " ties-even")));
  }
}

// sint4 blocks whose step is an fp16 subnormal (amax / 7 below 2^-14) or rounds to zero: the step
// can then be far from amax / 7, so that amax / step reaches 7.5 and beyond, and codes must clamp to
// -7..7 (the vector path sends those blocks to the per-block one). Blocks of every such magnitude sit
// next to ordinary ones in groups that span rows, with 1, 2 and 3 threads.
TEST(SimdSint4, SubnormalStepsMatchReference) {
  const std::int64_t rows = 24, cols = 1152;
  const std::vector<float> x = blocks_at_magnitudes(rows, cols, 7, [](std::int64_t block, std::mt19937& rng) {
    return block % 4 == 3 ? 1.0f : std::ldexp(1.0f, -int(rng() % 16) - 12);  // 2^-12 .. 2^-27
  });
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!isa_available(isa)) continue;
    for (int threads : {1, 2, 3})
      ASSERT_NO_FATAL_FAILURE(expect_reference_bits(Format::sint4, x, rows, cols, isa, Rounding::nearest_even, threads,
                                                    std::string(isa_name(isa)) + " " + std::to_string(threads) +
                                                        " threads"));
  }
}

// Every format on blocks of 64 values at one magnitude each, tiny (2^-150 to 2^-110), huge (2^100 to
// 2^124) or ordinary: the shared scales at both ends of their range (MX exponents near -126, where
// 2^-e times a grid's own power of two leaves the floats), whole rows of such blocks so that the
// vector paths handle them in groups, with 1 and 3 threads.
TEST(SimdBlockScales, ExtremeMagnitudesMatchReference) {
  const std::int64_t rows = 6, cols = 1152;
  const std::vector<float> x = blocks_at_magnitudes(rows, cols, 11, [](std::int64_t, std::mt19937& rng) {
    const int kind = int(rng() % 3);
    return std::ldexp(1.0f, kind == 0 ? int(rng() % 41) - 150 : kind == 1 ? 100 + int(rng() % 25) : int(rng() % 7) - 3);
  });
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!isa_available(isa)) continue;
    for (const FormatInfo& info : all_formats()) {
      for (int threads : {1, 3})
        ASSERT_NO_FATAL_FAILURE(expect_reference_bits(info.format, x, rows, cols, isa, Rounding::nearest_even,
                                                      threads,
                                                      std::string(isa_name(isa)) + " " + std::string(info.name) + " " +
                                                          std::to_string(threads) + " threads"));
    }
  }
}

// Zeros of both signs inside ordinary blocks, which the vector paths take whole (hostile_input's
// blocks mostly hold a near-tie and go to the per-block path instead): -0 must come out as the
// reference makes it, -0 for float elements and +0 for integer codes. (Found by loraq.torch's device
// codec test: sint4's vector path gave -0.)
TEST(SimdSignedZeros, EveryFormatMatchesReference) {
  const std::int64_t rows = 4, cols = 1152;
  std::vector<float> x = blocks_at_magnitudes(rows, cols, 13, [](std::int64_t, std::mt19937& rng) {
    return std::ldexp(1.0f, int(rng() % 7) - 3);
  });
  std::mt19937 rng(14);
  for (std::size_t i = 0; i < x.size(); i += 1 + rng() % 9) x[i] = rng() % 2 ? -0.0f : 0.0f;
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!isa_available(isa)) continue;
    for (const FormatInfo& info : all_formats())
      for (Rounding mode : {Rounding::nearest_even, Rounding::nearest_away})
        ASSERT_NO_FATAL_FAILURE(expect_reference_bits(
            info.format, x, rows, cols, isa, mode, 2,
            std::string(isa_name(isa)) + " " + std::string(info.name) +
                (mode == Rounding::nearest_away ? " ties-away" : " ties-even")));
  }
}

// The vectorized 16-bit casts against the reference over a sweep of every 997th float bit pattern
// (4.3 million values: every binade, subnormals, NaN payloads and both signs) plus the edges where
// rounding reaches the largest finite value (fp16 65504 / 65520, bf16 0x7F7F7FFF / 0x7F7F8000).
TEST(SimdCasts, SixteenBitCastsMatchReferenceOverTheFloats) {
  std::vector<float> x;
  for (std::uint64_t b = 0; b <= 0xFFFFFFFFull; b += 997) x.push_back(std::bit_cast<float>(std::uint32_t(b)));
  for (float edge : {65504.0f, 65519.996f, 65520.0f, 65535.0f, 65536.0f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f,
                     std::bit_cast<float>(0x7F7F7FFFu), std::bit_cast<float>(0x7F7F8000u), std::bit_cast<float>(0x7F7FFFFFu),
                     std::bit_cast<float>(0x00008000u), std::bit_cast<float>(0x0000FFFFu)}) {
    x.push_back(edge);
    x.push_back(-edge);
  }
  const auto cols = std::int64_t(x.size());
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!isa_available(isa)) continue;
    for (Format f : {Format::fp16, Format::bf16}) {
      std::vector<float> want(x.size()), got(x.size());
      fake_quantize(f, x, want, 1, cols, {Rounding::nearest_even, Isa::scalar, 2});
      fake_quantize(f, x, got, 1, cols, {Rounding::nearest_even, isa, 2});
      for (std::size_t i = 0; i < x.size(); ++i)
        ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
            << format_info(f).name << " " << isa_name(isa) << " x bits 0x" << std::hex
            << std::bit_cast<std::uint32_t>(x[i]);
    }
  }
}

// Results never depend on the number of threads.
TEST(Threads, SameBytesWhateverTheThreadCount) {
  const std::vector<float> x = hostile_input(37 * 1152, 99, false);
  for (Format f : {Format::mxfp4, Format::nvfp4, Format::sint4, Format::bf16}) {
    const PackedMatrix one = pack(f, x, 37, 1152, {Rounding::nearest_even, std::nullopt, 1});
    const PackedMatrix two = pack(f, x, 37, 1152, {Rounding::nearest_even, std::nullopt, 2});
    const PackedMatrix five = pack(f, x, 37, 1152, {Rounding::nearest_even, std::nullopt, 5});
    EXPECT_EQ(one.codes, two.codes);
    EXPECT_EQ(one.codes, five.codes);
    EXPECT_EQ(one.scales, five.scales);
  }
}

}  // namespace
}  // namespace loraq
