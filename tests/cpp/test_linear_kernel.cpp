// The quantized linear kernels against the fake-quantized layer computed in float64, within the
// bound of fp32 accumulation; the kernel set of every --isa against the scalar one and every thread
// count bit for bit; and, on a GPU, the CUDA kernels bit for bit against the CPU's integer path.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "cuda/cuda_testing.hpp"
#include "loraq/cuda.hpp"
#include "loraq/format.hpp"
#include "linear_cases.hpp"
#include "loraq/linear_kernel.hpp"
#include "test_support.hpp"

namespace loraq {
namespace {

using testing::Case, testing::Fixture, testing::describe, testing::heavy_tailed, testing::make, testing::name_of;

// The float64 reference and, per output, the bound |y - ref| <= gamma(n) * magnitude with
// gamma(n) = n u / (1 - n u), u = 2^-24: n counts the roundings an output goes through (one per
// fused multiply-add of the residual's chunks or, on the float path, of its in_features terms;
// those of T's chunks; one per up-projection term; the chunk scale products; the bias), and
// magnitude = sum |qa1 P| + sum_j |up_j| sum |qa2 down_j| + |bias|.
// With an intermediate format Qt, the kernel's own fp32 T (intermediate()) is checked against T in
// float64 within its bound, and the reference takes Qt of the kernel's T, with magnitude
// sum_j |Qt(T)_j up_j| for the branch: quantizing the float64 T could round a value the other way
// than the kernel's fp32 T, a whole step of Qt that no accumulation bound covers.
struct Reference {
  std::vector<double> y, bound;
};

Reference reference(const Case& c, const Fixture& f, const QuantizedLinearKernel& kernel) {
  std::vector<float> xs(f.x);
  if (!f.layer.smooth.empty())
    for (std::int64_t i = 0; i < c.rows; ++i)
      for (std::int64_t k = 0; k < c.in; ++k) xs[std::size_t(i * c.in + k)] /= f.layer.smooth[std::size_t(k)];
  std::vector<float> qa1(xs.size()), qa2(xs.size());
  if (c.act1)
    fake_quantize(*c.act1, xs, qa1, c.rows, c.in);
  else
    qa1 = xs;
  if (c.act2)
    fake_quantize(*c.act2, xs, qa2, c.rows, c.in);
  else
    qa2 = xs;
  const std::vector<float> p = unpack(f.layer.residual);
  std::vector<float> down, up;
  if (f.layer.branch) {
    down = unpack(f.layer.branch->down);
    up = unpack(f.layer.branch->up);
  }
  const double u = std::ldexp(1.0, -24);
  const std::int64_t chunks = (c.in + 31) / 32;
  const double n = double((kernel.residual_is_integer() ? chunks : c.in) + (kernel.branch_is_integer() ? chunks : c.in) +
                          c.rank + 4);
  const double gamma = n * u / (1 - n * u);
  std::vector<float> t_kernel, t_quantized;
  if (c.act_t && c.rank > 0) {
    t_kernel = kernel.intermediate(f.x, c.rows);
    t_quantized.resize(t_kernel.size());
    fake_quantize(*c.act_t, t_kernel, t_quantized, c.rows, c.rank);
  }
  Reference ref;
  for (std::int64_t i = 0; i < c.rows; ++i) {
    std::vector<double> t(std::size_t(c.rank)), t_abs(std::size_t(c.rank));
    for (std::int64_t j = 0; j < c.rank; ++j) {
      for (std::int64_t k = 0; k < c.in; ++k) {
        const double prod = double(qa2[std::size_t(i * c.in + k)]) * down[std::size_t(j * c.in + k)];
        t[std::size_t(j)] += prod;
        t_abs[std::size_t(j)] += std::abs(prod);
      }
      if (!t_kernel.empty()) {
        const std::size_t at = std::size_t(i * c.rank + j);
        EXPECT_LE(std::abs(double(t_kernel[at]) - t[std::size_t(j)]), gamma * t_abs[std::size_t(j)])
            << "T[" << i << ", " << j << "]";
        t[std::size_t(j)] = t_quantized[at];
        t_abs[std::size_t(j)] = std::abs(t[std::size_t(j)]);
      }
    }
    for (std::int64_t o = 0; o < c.out; ++o) {
      double y = f.bias.empty() ? 0.0 : f.bias[std::size_t(o)], mag = std::abs(y);
      for (std::int64_t k = 0; k < c.in; ++k) {
        const double prod = double(qa1[std::size_t(i * c.in + k)]) * p[std::size_t(o * c.in + k)];
        y += prod;
        mag += std::abs(prod);
      }
      for (std::int64_t j = 0; j < c.rank; ++j) {
        y += t[std::size_t(j)] * up[std::size_t(o * c.rank + j)];
        mag += t_abs[std::size_t(j)] * std::abs(up[std::size_t(o * c.rank + j)]);
      }
      ref.y.push_back(y);
      ref.bound.push_back(gamma * mag);
    }
  }
  return ref;
}

std::vector<float> run(const QuantizedLinearKernel& kernel, const Fixture& f, std::int64_t rows,
                       const LinearKernelOptions& options = {}) {
  std::vector<float> y(std::size_t(rows * kernel.out_features()));
  kernel.forward(f.x, rows, y, options);
  return y;
}

void expect_within_bound(const Case& c, unsigned seed) {
  SCOPED_TRACE(describe(c) + " seed " + std::to_string(seed));
  const Fixture f = make(c, seed);
  const QuantizedLinearKernel kernel(f.layer, LayerActivations{c.act1, c.act2, c.act_t}, f.bias);
  const Reference ref = reference(c, f, kernel);
  const std::vector<float> y = run(kernel, f, c.rows);
  int failures = 0;
  for (std::size_t i = 0; i < y.size() && failures < 5; ++i)
    if (!(std::abs(double(y[i]) - ref.y[i]) <= ref.bound[i])) {
      ++failures;
      ADD_FAILURE() << "output " << i << ": " << y[i] << " vs " << ref.y[i] << " (bound " << ref.bound[i] << ")";
    }
}

TEST(LinearKernel, IntegerPathWithinFp32BoundOfFloat64Reference) {
  const Format weights4[] = {Format::sint4, Format::mxint4};
  const Format branches[] = {Format::mxint8, Format::mxint4, Format::sint4};
  const Format acts[] = {Format::mxint8, Format::mxint4, Format::sint4, Format::int8_channel};
  // Shapes with partial chunks (in 100, 257), a partial panel (out 13, 43), rank 86 and a tail
  // tile of tokens (37 = 2 blocks of 16 + 5).
  const std::int64_t shapes[][4] = {{37, 43, 257, 86}, {5, 13, 100, 7}, {1, 64, 64, 16}, {20, 8, 96, 86}};
  unsigned seed = 1;
  for (Format w : weights4)
    for (Format b : branches)
      for (Format a : acts)
        for (const auto& s : shapes) {
          expect_within_bound({w, b, a, a == Format::mxint4 ? Format::mxint8 : a, s[0], s[1], s[2], s[3]}, seed++);
          ASSERT_FALSE(HasFailure());
        }
}

TEST(LinearKernel, TinyActivationsWithSubnormalScalesWithinBound) {
  // Inputs so small that sint4's fp16 block scales are subnormal (below 2^-14; the kernels decode
  // them by moving bits, not through the element table) and mxint8's shared exponents are far below 1.
  unsigned seed = 300;
  for (float x_scale : {1e-7f, 3e-6f, 2e-5f})
    for (Format a : {Format::sint4, Format::mxint8}) {
      Case c{Format::sint4, Format::mxint8, a, a, 13, 24, 160, 8};
      c.smooth = false;
      c.x_scale = x_scale;
      expect_within_bound(c, seed++);
    }
}

TEST(LinearKernel, FloatPathWithinBound) {
  // Formats the integer kernels do not take: mxfp4 and nvfp4 residuals, fp16 and mxfp6 branches,
  // fp16 activations (W4A16).
  const Case cases[] = {
      {Format::mxfp4, Format::mxint8, Format::mxfp8_e4m3, Format::mxint8, 21, 40, 96, 24},
      {Format::sint4, Format::fp16, Format::fp16, Format::fp16, 9, 33, 130, 32},
      {Format::nvfp4, Format::mxfp6_e2m3, Format::mxint8, Format::mxfp8_e4m3, 18, 16, 64, 86},
      {Format::sint4, Format::mxint8, Format::fp16, Format::mxint8, 6, 24, 128, 62},
      {Format::sint4, Format::fp16, std::nullopt, std::nullopt, 7, 24, 96, 32},  // W4A16 without Qa
      {Format::mxint4, Format::mxint8, Format::mxint8, std::nullopt, 5, 16, 64, 16},
  };
  unsigned seed = 100;
  for (const Case& c : cases) expect_within_bound(c, seed++);
}

// Qt on the intermediate: integer up-projections (mxint8 and 4-bit up weights with 8- and 4-bit Qt),
// the float one (an mxfp4 or fp16 up, or a float Qt), after an integer or a float down-projection.
TEST(LinearKernel, IntermediateFormatWithinBound) {
  const Format i8 = Format::mxint8;
  const Case cases[] = {
      {Format::sint4, i8, i8, i8, 37, 43, 257, 86, true, true, 1.0f, i8},
      {Format::sint4, i8, Format::sint4, i8, 20, 72, 192, 62, true, true, 1.0f, i8},
      {Format::mxint4, Format::mxint4, Format::mxint4, Format::mxint4, 13, 24, 100, 33, true, true, 1.0f, Format::mxint4},
      {Format::sint4, Format::sint4, i8, i8, 9, 16, 96, 70, true, true, 1.0f, Format::sint4},
      {Format::sint4, i8, i8, std::nullopt, 7, 40, 64, 30, true, true, 1.0f, i8},        // float down, integer up
      {Format::mxfp4, Format::mxfp4, i8, i8, 11, 24, 128, 40, true, true, 1.0f, i8},     // mxfp4 up: float
      {Format::sint4, Format::fp16, i8, i8, 5, 16, 64, 16, true, true, 1.0f, Format::mxfp8_e4m3},  // fp16 up: float
  };
  unsigned seed = 700;
  for (const Case& c : cases) {
    expect_within_bound(c, seed++);
    ASSERT_FALSE(HasFailure());
  }
}

TEST(LinearKernel, IntermediateFormatIsApplied) {
  // The bound above is far below a step of Qt, so the reference without Qt must be outside it
  // somewhere: the kernel did quantize T (and with an integer up-projection, on the integer kernels).
  Case c{Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 12, 32, 128, 40};
  c.act_t = Format::mxint4;
  const Fixture f = make(c, 800);
  const QuantizedLinearKernel with(f.layer, LayerActivations{c.act1, c.act2, c.act_t}, f.bias);
  const QuantizedLinearKernel without(f.layer, c.act1, c.act2, f.bias);
  EXPECT_TRUE(with.up_is_integer());
  EXPECT_FALSE(without.up_is_integer());
  EXPECT_NE(with.describe().find("up integer mxint8 x mxint4"), std::string::npos) << with.describe();
  Case plain_case = c;
  plain_case.act_t.reset();
  const Reference plain = reference(plain_case, f, without);  // T in fp32
  const std::vector<float> y = run(with, f, c.rows);
  int outside = 0;
  for (std::size_t i = 0; i < y.size(); ++i) outside += std::abs(double(y[i]) - plain.y[i]) > plain.bound[i];
  EXPECT_GT(outside, int(y.size()) / 2);
  // The intermediate is T before Qt, the same with or without it.
  EXPECT_EQ(with.intermediate(f.x, c.rows), without.intermediate(f.x, c.rows));
  EXPECT_EQ(std::int64_t(with.intermediate(f.x, c.rows).size()), c.rows * c.rank);
}

TEST(LinearKernel, ExtremeCodesDoNotOverflowTheInt16Sums) {
  // Every activation code at +-127 and every weight code at +-7: the largest chunk sums the AVX2
  // kernels add up in int16 (30480 with the +8 offset of 4-bit weights).
  // Magnitudes that give the largest code of each format with an exact, dyadic value.
  for (auto [w, m] : {std::pair{Format::sint4, 7.0f}, {Format::mxint4, 1.75f}, {Format::mxint8, 127.0f / 64}}) {
    const std::int64_t rows = 6, out = 16, in = 256;
    QuantizedLayer layer;
    layer.out_features = out;
    layer.in_features = in;
    std::vector<float> weights(std::size_t(out * in)), x(std::size_t(rows * in));
    for (std::size_t i = 0; i < weights.size(); ++i) weights[i] = (i / 3) % 2 ? -m : m;
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i / 5) % 2 ? -127.0f / 64 : 127.0f / 64;
    layer.residual = pack(w, weights, out, in);
    const QuantizedLinearKernel kernel(layer, Format::mxint8, Format::mxint8);
    std::vector<float> y(std::size_t(rows * out)), qx(x.size());
    kernel.forward(x, rows, y);
    fake_quantize(Format::mxint8, x, qx, rows, in);
    const std::vector<float> p = unpack(layer.residual);
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t o = 0; o < out; ++o) {
        double ref = 0;
        for (std::int64_t k = 0; k < in; ++k) ref += double(qx[std::size_t(i * in + k)]) * p[std::size_t(o * in + k)];
        // Sums of exact powers of two and small integers: fp32 holds them exactly.
        ASSERT_EQ(double(y[std::size_t(i * out + o)]), ref) << format_info(w).name << " row " << i << " col " << o;
      }
  }
}

TEST(LinearKernel, EveryInstructionSetEqualsScalarBitForBit) {
  // Odd and even panel counts (the AVX-512 kernels take panels in pairs and hand an odd last one to
  // the AVX2-width set), token counts that leave partial tiles, odd and even ranks.
  const Case cases[] = {
      {Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 37, 43, 257, 86},
      {Format::mxint4, Format::sint4, Format::mxint4, Format::mxint8, 23, 72, 192, 62},
      {Format::mxint8, Format::mxint4, Format::int8_channel, Format::sint4, 9, 20, 100, 5},
      {Format::int8_channel, Format::mxint8, Format::sint4, Format::mxint8, 70, 136, 96, 33},
      {Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 37, 43, 257, 86, true, true, 1.0f, Format::mxint8},
      {Format::mxint4, Format::sint4, Format::mxint4, Format::mxint8, 23, 72, 192, 62, true, true, 1.0f, Format::sint4},
  };
  int compared = 0;
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!isa_available(isa)) continue;
    unsigned seed = 200;
    for (const Case& c : cases) {
      SCOPED_TRACE(describe(c) + " " + std::string(isa_name(isa)));
      const Fixture f = make(c, seed++);
      const QuantizedLinearKernel kernel(f.layer, LayerActivations{c.act1, c.act2, c.act_t}, f.bias);
      LinearKernelOptions scalar, vector;
      scalar.isa = Isa::scalar;
      vector.isa = isa;
      const std::vector<float> a = run(kernel, f, c.rows, scalar), b = run(kernel, f, c.rows, vector);
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << kernel.describe(vector);
      ++compared;
    }
  }
  if (compared == 0) GTEST_SKIP() << "no AVX2 on this CPU";
}

TEST(LinearKernel, DescribeNamesTheKernelsThatRun) {
  const Case c{Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 4, 16, 64, 8};
  const Fixture f = make(c, 7);
  const QuantizedLinearKernel kernel(f.layer, c.act1, c.act2, f.bias);
  LinearKernelOptions scalar;
  scalar.isa = Isa::scalar;
  EXPECT_NE(kernel.describe(scalar).find("integer sint4 x mxint8 (scalar)"), std::string::npos) << kernel.describe(scalar);
  if (isa_available(Isa::avx512) && __builtin_cpu_supports("avx512vnni")) {
    LinearKernelOptions avx512;
    avx512.isa = Isa::avx512;
    EXPECT_NE(kernel.describe(avx512).find("(avx512-vnni)"), std::string::npos) << kernel.describe(avx512);
  }
}

TEST(LinearKernel, ThreadCountDoesNotChangeTheBits) {
  // 3 rows: one block split across panels; 70 rows: blocks shared out. With and without Qt.
  for (std::optional<Format> qt : {std::optional<Format>(), std::optional<Format>(Format::mxint8)})
    for (std::int64_t rows : {3, 70}) {
      const Case c{Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, rows, 200, 160, 40,
                   true, true, 1.0f, qt};
      const Fixture f = make(c, 300 + unsigned(rows));
      const QuantizedLinearKernel kernel(f.layer, LayerActivations{c.act1, c.act2, c.act_t}, f.bias);
      std::vector<float> first;
      for (int threads : {1, 2, 3, 5}) {
        LinearKernelOptions options;
        options.threads = threads;
        const std::vector<float> y = run(kernel, f, rows, options);
        if (first.empty()) first = y;
        ASSERT_EQ(0, std::memcmp(first.data(), y.data(), y.size() * sizeof(float))) << describe(c) << ", " << threads;
      }
    }
}

TEST(LinearKernel, SkipBranchIsTheResidualAlone) {
  const Case c{Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 11, 24, 96, 30};
  Fixture f = make(c, 400);
  const QuantizedLinearKernel with(f.layer, c.act1, c.act2, f.bias);
  LinearKernelOptions skip;
  skip.skip_branch = true;
  const std::vector<float> skipped = run(with, f, c.rows, skip);
  f.layer.branch.reset();
  const QuantizedLinearKernel without(f.layer, c.act1, c.act2, f.bias);
  const std::vector<float> alone = run(without, f, c.rows);
  ASSERT_EQ(0, std::memcmp(skipped.data(), alone.data(), alone.size() * sizeof(float)));
  EXPECT_NE(skipped, run(with, f, c.rows));
}

TEST(LinearKernel, NonFiniteInputStaysInItsRow) {
  // Also through Qt: an integer one (the up-projection on the integer kernels) and a float one.
  for (std::optional<Format> qt : {std::optional<Format>(), std::optional<Format>(Format::mxint8),
                                   std::optional<Format>(Format::mxfp8_e4m3)}) {
    const Case c{Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 4, 16, 64, 8, true, true, 1.0f, qt};
    Fixture f = make(c, 500);
    f.x[std::size_t(2 * c.in + 5)] = std::nanf("");
    const QuantizedLinearKernel kernel(f.layer, LayerActivations{c.act1, c.act2, c.act_t}, f.bias);
    const std::vector<float> y = run(kernel, f, c.rows);
    for (std::int64_t i = 0; i < c.rows; ++i)
      for (std::int64_t o = 0; o < c.out; ++o)
        EXPECT_EQ(std::isfinite(y[std::size_t(i * c.out + o)]), i != 2) << describe(c) << " " << i << "," << o;
  }
}

TEST(LinearKernel, BadSizesNameTheLayer) {
  const Case c{Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 2, 16, 64, 8};
  Fixture f = make(c, 600);
  const QuantizedLinearKernel kernel(f.layer, c.act1, c.act2, f.bias, "blocks.0.attn.to_q");
  std::vector<float> y(10);
  EXPECT_NE(testing::error_of([&] { kernel.forward(f.x, c.rows, y); }).find("blocks.0.attn.to_q: output"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] { kernel.forward(f.x, 3, y); }).find("input has 128 values, expected 3 x 64"),
            std::string::npos);
  const std::vector<float> short_bias(5);
  EXPECT_NE(testing::error_of([&] { QuantizedLinearKernel(f.layer, c.act1, c.act2, short_bias, "l"); })
                .find("l: bias has 5 values, expected 16"),
            std::string::npos);
  f.layer.branch->up.cols = 9;
  EXPECT_NE(testing::error_of([&] { QuantizedLinearKernel(f.layer, c.act1, c.act2, {}, "l"); }).find("l: branch"),
            std::string::npos);
}

// The CUDA kernels (cuda::LinearKernel) do the CPU integer path's operations in its order, so their
// outputs must be the CPU's bits: W4A8 and W4A4, separate activation formats for the branch, rank
// 86, partial chunks and tiles of tokens and outputs, smoothing and bias, the branch skipped.
TEST(LinearKernel, CudaEqualsCpuBitForBit) {
  if (!cuda::built()) GTEST_SKIP() << "SKIPPED LOUDLY: built without CUDA (LORAQ_CUDA=OFF)";
  if (cuda::device_count() == 0) {
    const Fixture f = make({Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 4, 16, 64, 8}, 1);
    EXPECT_THROW(cuda::LinearKernel(f.layer, Format::mxint8, Format::mxint8), Error);
    GTEST_SKIP() << "SKIPPED LOUDLY: no CUDA GPU on this machine: the CUDA kernels were compiled but not run";
  }
  const Case cases[] = {
      {Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 130, 70, 257, 86},   // W4A8
      {Format::sint4, Format::sint4, Format::sint4, Format::mxint8, 37, 130, 100, 16},     // W4A4
      {Format::mxint4, Format::mxint4, Format::mxint4, Format::mxint4, 65, 64, 96, 33},
      // An odd rank with sint4's fp16 scales: the all-MX layer above can sum exactly in any order,
      // which would hide the last term in the wrong chain.
      {Format::sint4, Format::sint4, Format::mxint8, Format::mxint8, 65, 64, 96, 33},
      {Format::mxint4, Format::mxint8, Format::mxint8, Format::sint4, 1, 13, 64, 62},
      {Format::int8_channel, Format::sint4, Format::mxint8, Format::mxint8, 70, 129, 160, 0, false, false},
  };
  // Both GEMM variants (src/cuda/kernel_variants.hpp); a LinearKernel reads LORAQ_CUDA_LINEAR when
  // it is made.
  const char* const previous = std::getenv("LORAQ_CUDA_LINEAR");
  const std::string restore = previous ? previous : "";
  for (const char* variant : {"simple", "pipelined"}) {
    setenv("LORAQ_CUDA_LINEAR", variant, 1);
    unsigned seed = 300;
    for (const Case& c : cases) {
      const Fixture f = make(c, seed++);
      const QuantizedLinearKernel cpu(f.layer, c.act1, c.act2, f.bias);
      const cuda::LinearKernel gpu(f.layer, *c.act1, c.act2, f.bias);
      for (bool skip_branch : {false, true}) {
        std::vector<float> want(std::size_t(c.rows * c.out)), got(want.size());
        LinearKernelOptions options;
        options.skip_branch = skip_branch;
        cpu.forward(f.x, c.rows, want, options);
        gpu.forward(f.x, c.rows, got, skip_branch);
        // And from device memory on a stream of the caller's (forward_device, loraq.torch's path).
        const std::vector<float> on_device =
            cuda::testing::forward_through_device_memory(gpu, f.x, c.rows, c.out, skip_branch);
        for (std::size_t i = 0; i < want.size(); ++i) {
          std::uint32_t a, b, d;
          std::memcpy(&a, &want[i], 4);
          std::memcpy(&b, &got[i], 4);
          std::memcpy(&d, &on_device[i], 4);
          ASSERT_EQ(a, b) << describe(c) << " skip_branch " << skip_branch << " at " << i << ": cpu " << want[i]
                          << " gpu " << got[i] << " (" << variant << " GEMMs)";
          ASSERT_EQ(a, d) << describe(c) << " skip_branch " << skip_branch << " at " << i << ": cpu " << want[i]
                          << " forward_device " << on_device[i] << " (" << variant << " GEMMs)";
        }
      }
    }
  }
  if (previous)
    setenv("LORAQ_CUDA_LINEAR", restore.c_str(), 1);
  else
    unsetenv("LORAQ_CUDA_LINEAR");
  // Formats the CUDA kernels do not take are refused by name.
  const Fixture f = make({Format::mxfp4, Format::mxint8, Format::mxint8, Format::mxint8, 4, 16, 64, 8}, 9);
  EXPECT_THROW(cuda::LinearKernel(f.layer, Format::mxint8, Format::mxint8, {}, "mxfp4-layer"), Error);
  // forward_device refuses host memory by name instead of faulting on it.
  const Fixture h = make({Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 4, 16, 64, 8}, 10);
  const cuda::LinearKernel gpu(h.layer, Format::mxint8, Format::mxint8, {}, "host-input");
  std::vector<float> y(4 * 16);
  EXPECT_NE(testing::error_of([&] { gpu.forward_device(h.x.data(), 4, y.data(), 0); })
                .find("host-input: forward_device needs x in the memory of GPU"),
            std::string::npos);
}

}  // namespace
}  // namespace loraq
