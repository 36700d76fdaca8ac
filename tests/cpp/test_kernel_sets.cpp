// Every kernel set this CPU runs (AVX-512 VNNI, AVX-VNNI, AVX2) against the scalar set, call by call,
// with no driver in between: the panel kernels for every token count of a tile, every integer
// weight and activation format, random and extreme codes; the epilogue for odd and even ranks.
// Exact equality: every set must do the same int32 chunk sums and the same fp32 operations.
// (test_linear_kernel checks whole layers, but only through the set the CPU picks for each --isa.)
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "loraq/format.hpp"
#include "runtime/cpu/kernel_layout.hpp"

namespace loraq::runtime {
namespace {

constexpr std::int64_t kOut = 40;  // 5 panels: two-panel sets also meet an odd count
constexpr int kTokens = kMaxTile;

// Values whose codes are the format's extremes (random signs), or heavy-tailed ones.
std::vector<float> values(Format f, std::int64_t n, bool extreme, std::mt19937& rng) {
  std::vector<float> v(static_cast<std::size_t>(n));
  std::student_t_distribution<float> heavy(4.0f);
  std::bernoulli_distribution sign;
  // Each magnitude is the largest code of its format at a scale of one (MX: the e8m0 scale 2^0).
  const float top = f == Format::mxint4 ? 1.75f : f == Format::mxint8 ? 127.0f / 64 : 7.0f;
  for (float& x : v) x = extreme ? (sign(rng) ? top : -top) : heavy(rng);
  return v;
}

std::vector<const KernelSet*> vector_sets() {
  std::vector<const KernelSet*> sets = available_kernel_sets();
  sets.erase(sets.begin());  // the scalar set itself
  return sets;
}

// minus128: every third code byte of an 8-bit weight set to -128, which the codec never writes but a
// hostile checkpoint can hold (the kernels must still compute it exactly, as the scalar set does).
void expect_panels_match(Format weight, Format activation, std::int64_t cols, bool extreme, unsigned seed,
                         bool minus128 = false) {
  std::mt19937 rng(seed);
  PackedMatrix packed = pack(weight, values(weight, kOut * cols, extreme, rng), kOut, cols);
  if (minus128)
    for (std::size_t i = 0; i < packed.codes.size(); i += 3) packed.codes[i] = 0x80;
  const WeightPanels w = make_panels(packed);
  ActivationRows a;
  const std::vector<float> x = values(activation, kTokens * cols, extreme, rng);
  quantize_activations(activation, x.data(), kTokens, cols, a);
  const KernelSet& scalar = scalar_kernels();
  for (const KernelSet* set : vector_sets()) {
    const PanelKernel kernel = w.bits == 4 ? set->w4 : set->w8;
    const PanelKernel reference = w.bits == 4 ? scalar.w4 : scalar.w8;
    for (int tokens = 1; tokens <= set->tile; ++tokens)
      for (std::int64_t p = 0; p + set->panels <= w.panels; p += set->panels) {
        float got[kMaxTile * kMaxPanels * kPanel], want[kMaxTile * kPanel];
        kernel(w.panel_codes(p), w.panel_scales(p), w.chunks, tile_at(a, 0), tokens, got);
        for (int q = 0; q < set->panels; ++q) {
          reference(w.panel_codes(p + q), w.panel_scales(p + q), w.chunks, tile_at(a, 0), tokens, want);
          for (int t = 0; t < tokens; ++t)
            ASSERT_EQ(0, std::memcmp(got + t * set->rows() + q * kPanel, want + t * kPanel, kPanel * sizeof(float)))
                << set->name << " " << format_info(weight).name << " x " << format_info(activation).name
                << (extreme ? " extreme" : "") << ": panel " << p + q << ", " << tokens << " tokens, token " << t;
        }
      }
  }
}

TEST(KernelSets, PanelsEqualScalarBitForBit) {
  if (vector_sets().empty()) GTEST_SKIP() << "no vector kernel set on this CPU";
  unsigned seed = 1;
  for (Format weight : {Format::sint4, Format::mxint4, Format::mxint8, Format::int8_channel})
    for (Format activation : {Format::sint4, Format::mxint4, Format::mxint8})
      for (std::int64_t cols : {96, 257})
        for (bool extreme : {false, true}) expect_panels_match(weight, activation, cols, extreme, seed++);
}

TEST(KernelSets, WeightCodeMinus128EqualsScalar) {
  if (vector_sets().empty()) GTEST_SKIP() << "no vector kernel set on this CPU";
  unsigned seed = 100;
  for (Format weight : {Format::mxint8, Format::int8_channel})
    for (Format activation : {Format::sint4, Format::mxint8})
      for (bool extreme : {false, true}) expect_panels_match(weight, activation, 96, extreme, seed++, true);
}

TEST(KernelSets, EpilogueEqualsScalarBitForBit) {
  if (vector_sets().empty()) GTEST_SKIP() << "no vector kernel set on this CPU";
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (std::int64_t rank : {0, 1, 5, 62, 86}) {
    // T term-major: token t's term j at t_rows[j * kTokens + t].
    std::vector<float> up(static_cast<std::size_t>(kOut * rank)), t_rows(static_cast<std::size_t>(kTokens * rank));
    std::vector<float> acc(kMaxTile * kMaxPanels * kPanel), bias(kMaxPanels * kPanel);
    for (auto* v : {&up, &t_rows, &acc, &bias})
      for (float& x : *v) x = normal(rng);
    const UpProjection projection(up, kOut, rank);
    for (const KernelSet* set : vector_sets())
      for (int tokens = 1; tokens <= set->tile; ++tokens)
        for (std::int64_t p = 0; p + set->panels <= (kOut + kPanel - 1) / kPanel; p += set->panels) {
          // The set writes with a row stride wider than its rows (as into a layer's output), the
          // scalar reference with stride kPanel; the gap must stay untouched.
          constexpr float kUntouched = -12345.0f;
          const std::int64_t stride = set->rows() + 3;
          std::vector<float> got(std::size_t(kMaxTile * stride), kUntouched);
          float want[kMaxTile * kPanel], acc_q[kMaxTile * kPanel];
          set->epilogue(acc.data(), t_rows.data(), kTokens, projection.rows_of(p), projection.stride, rank, bias.data(),
                        tokens, got.data(), stride);
          for (int q = 0; q < set->panels; ++q) {
            for (int t = 0; t < tokens; ++t)
              std::memcpy(acc_q + t * kPanel, acc.data() + t * set->rows() + q * kPanel, kPanel * sizeof(float));
            scalar_kernels().epilogue(acc_q, t_rows.data(), kTokens, projection.rows_of(p + q), projection.stride, rank,
                                      bias.data() + q * kPanel, tokens, want, kPanel);
            for (int t = 0; t < tokens; ++t)
              ASSERT_EQ(0, std::memcmp(got.data() + t * stride + q * kPanel, want + t * kPanel, kPanel * sizeof(float)))
                  << set->name << ": rank " << rank << ", panel " << p + q << ", " << tokens << " tokens, token " << t;
          }
          for (std::int64_t i = 0; i < std::int64_t(got.size()); ++i) {
            if (i % stride >= set->rows() || i / stride >= tokens) {
              ASSERT_EQ(kUntouched, got[std::size_t(i)]) << set->name << ": wrote outside the tile at " << i;
            }
          }
        }
  }
}

TEST(KernelSets, TheCpuPicksTheWidestSet) {
  // The widest instruction set this CPU has must get the last (widest) kernel set it can run.
  const std::vector<const KernelSet*> sets = available_kernel_sets();
  const Isa widest = isa_available(Isa::avx512) ? Isa::avx512 : isa_available(Isa::avx2) ? Isa::avx2 : Isa::scalar;
  EXPECT_EQ(sets.back(), &kernels_for(widest)) << kernels_for(widest).name;
  EXPECT_EQ(&scalar_kernels(), &kernels_for(Isa::scalar));
}

}  // namespace
}  // namespace loraq::runtime
