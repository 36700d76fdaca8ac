// The CUDA backend's kernels run on the CPU through the SIMT emulation (src/cuda/simt_emulation.hpp):
// the codecs in both layouts and the linear kernels in both variants, bit for bit against the CPU
// reference, as tests/cpp/test_cuda.cpp and LinearKernel.CudaEqualsCpuBitForBit check them on a GPU.
// These run in every build, with or without a GPU or CUDA: kernels written on a machine without a
// GPU are run before one ever sees them. The simple linear kernel and the warp codec layout passed
// the GPU tests on an H200, so their passing here also checks the emulation (its mma fragment
// layout above all).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "codec_cases.hpp"
#include "linear_cases.hpp"
#include "loraq/format.hpp"
#include "loraq/linear_kernel.hpp"
#include "loraq/quantized_layer.hpp"
#include "methods/loraq_impl.hpp"
#include "runtime/cpu/kernel_layout.hpp"

// Last: the emulation defines CUDA's vocabulary (threadIdx, __shared__, min, max ...) as macros and
// global names.
#include "cuda/linear_kernels_body.cuh"
#include "cuda/quant_kernels_body.cuh"

namespace loraq {
namespace {

namespace emulated = cuda::emulated;
namespace impl = methods::loraq_impl;

using testing::normal_values;

const char* name_of(cuda::CodecKernel k) { return k == cuda::CodecKernel::warp ? "warp" : "vector"; }

// One warp's mma.sync on fragments loaded as the linear kernels load them (row-major A [16, 32], W
// [8, 32] so that B = W^T): the 16 x 8 int32 product. Extreme codes (-128, 127) included.
TEST(SimtEmulation, MmaIsTheMatrixProduct) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> code(-128, 127);
  std::int8_t a[16 * 32], w[8 * 32];
  for (auto& v : a) v = std::int8_t(code(rng));
  for (auto& v : w) v = std::int8_t(code(rng));
  a[0] = -128, w[0] = -128, a[1] = 127, w[1] = -128;
  int d[16 * 8] = {};
  simt::launch(dim3(1), dim3(32), [&] {
    const int lane = int(threadIdx.x), g = lane / 4, q = lane % 4;
    auto load = [](const std::int8_t* p) {
      unsigned v;
      std::memcpy(&v, p, 4);
      return v;
    };
    const unsigned af[4] = {load(a + g * 32 + 4 * q), load(a + (g + 8) * 32 + 4 * q), load(a + g * 32 + 16 + 4 * q),
                            load(a + (g + 8) * 32 + 16 + 4 * q)};
    const unsigned bf[2] = {load(w + g * 32 + 4 * q), load(w + g * 32 + 16 + 4 * q)};
    int out[4];
    simt::mma_m16n8k32_s8(out, af, bf);
    for (int r = 0; r < 4; ++r) d[(g + 8 * (r / 2)) * 8 + 2 * q + r % 2] = out[r];
  });
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      int want = 0;
      for (int k = 0; k < 32; ++k) want += int(a[i * 32 + k]) * int(w[j * 32 + k]);
      ASSERT_EQ(d[i * 8 + j], want) << "row " << i << " col " << j;
    }
}

// ldmatrix's x4 load, with the matrices the pipelined kernel picks (A: rows 0-7 and 8-15 of a 16-row
// tile by codes 0-15 and 16-31; B: two 8-column tiles by the same halves), gives mma the fragments
// of A W^T: checked against the matrix product itself, with padded rows as in shared memory.
TEST(SimtEmulation, LdmatrixLoadsMmaFragments) {
  constexpr int kStride = 48;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> code(-128, 127);
  alignas(16) std::int8_t a[16 * kStride], w[16 * kStride];
  for (auto& v : a) v = std::int8_t(code(rng));
  for (auto& v : w) v = std::int8_t(code(rng));
  int d[16 * 16] = {};
  simt::launch(dim3(1), dim3(32), [&] {
    const int lane = int(threadIdx.x), g = lane / 4, q = lane % 4, lm = lane / 8, lr = lane % 8;
    unsigned af[4], b4[4];
    simt::ldmatrix_x4(af, a + ((lm & 1) * 8 + lr) * kStride + (lm >> 1) * 16);
    simt::ldmatrix_x4(b4, w + ((lm >> 1) * 8 + lr) * kStride + (lm & 1) * 16);
    for (int tile = 0; tile < 2; ++tile) {
      const unsigned bf[2] = {b4[2 * tile], b4[2 * tile + 1]};
      int out[4];
      simt::mma_m16n8k32_s8(out, af, bf);
      for (int r = 0; r < 4; ++r) d[(g + 8 * (r / 2)) * 16 + tile * 8 + 2 * q + r % 2] = out[r];
    }
  });
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      int want = 0;
      for (int k = 0; k < 32; ++k) want += int(a[i * kStride + k]) * int(w[j * kStride + k]);
      ASSERT_EQ(d[i * 16 + j], want) << "row " << i << " col " << j;
    }
  EXPECT_THROW(simt::launch(dim3(1), dim3(32),
                            [&] {
                              unsigned r[4];
                              simt::ldmatrix_x4(r, a + 4);  // not 16-byte aligned
                            }),
               std::logic_error);
}

// A lane that returns early leaves the barriers: the rest of its block still synchronizes, and an
// exception thrown in a thread reaches the launch.
TEST(SimtEmulation, ExitedWarpsAndErrors) {
  std::vector<unsigned> seen(64, 0);
  simt::launch(dim3(2), dim3(64), [&] {
    if (threadIdx.x >= 32) return;  // the second warp leaves at once
    const unsigned v = __reduce_max_sync(0xFFFFFFFFu, threadIdx.x + 100 * blockIdx.x);
    __syncthreads();
    seen[threadIdx.x + 32 * blockIdx.x] = v + __shfl_xor_sync(0xFFFFFFFFu, threadIdx.x, 1);
  });
  for (unsigned t = 0; t < 64; ++t) EXPECT_EQ(seen[t], 31 + 100 * (t / 32) + ((t % 32) ^ 1u)) << t;
  EXPECT_THROW(simt::launch(dim3(1), dim3(32), [] {
                 if (threadIdx.x == 5) throw Error("lane 5");
               }),
               Error);
}

// As Cuda.FakeQuantizeMatchesReference: every device format, both roundings, both layouts, column
// counts with partial blocks and segments, NaN and Inf.
TEST(CudaEmulated, FakeQuantizeMatchesReference) {
  std::mt19937 rng(5);
  for (const FormatInfo& info : all_formats()) {
    for (Rounding mode : {Rounding::nearest_even, Rounding::nearest_away}) {
      emulated::DeviceFormat g;
      if (!emulated::device_format(info.format, mode, g)) continue;
      for (std::int64_t cols : testing::kCodecColumns) {
        const std::int64_t rows = 3;
        const std::vector<float> x = testing::codec_input(rows, cols, rng);
        std::vector<float> want(x.size());
        fake_quantize(info.format, x, want, rows, cols, {mode, Isa::scalar, 1});
        for (cuda::CodecKernel kernel : {cuda::CodecKernel::warp, cuda::CodecKernel::vector}) {
          std::vector<float> got(x.size(), -1.0f);
          emulated::fake_quantize_device(g, x.data(), got.data(), rows, cols, nullptr, kernel);
          for (std::size_t i = 0; i < x.size(); ++i)
            ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
                << info.name << " cols " << cols << " i " << i << ", " << name_of(kernel) << " layout";
        }
      }
    }
  }
}

// As Cuda.QuantizationErrorMatchesCpu: e = Q(x - y) - (x - y) bit for bit, each row's sum of squares
// to 1e-12 of the CPU's, in both layouts; and the fixed-tree total.
TEST(CudaEmulated, QuantizationErrorMatchesCpu) {
  for (Format f : {Format::sint4, Format::mxint8, Format::mxfp4, Format::mxfp6_e2m3}) {
    emulated::DeviceFormat g;
    ASSERT_TRUE(emulated::device_format(f, Rounding::nearest_even, g));
    for (std::int64_t cols : testing::kErrorColumns) {
      const std::int64_t rows = 3;
      const auto n = std::size_t(rows * cols);
      const std::vector<float> x = normal_values(n, 11), y = normal_values(n, 12, 0.3f);
      const std::vector<float> want = testing::quantization_error_reference(f, x, y, rows, cols);
      for (cuda::CodecKernel kernel : {cuda::CodecKernel::warp, cuda::CodecKernel::vector}) {
        std::vector<float> got(n);
        std::vector<double> row_ss(static_cast<std::size_t>(rows));
        emulated::quantization_error_device(g, x.data(), y.data(), got.data(), row_ss.data(), rows, cols, nullptr,
                                            kernel);
        for (std::size_t i = 0; i < n; ++i)
          ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
              << format_info(f).name << " cols " << cols << " i " << i << ", " << name_of(kernel) << " layout";
        double all = 0;
        for (std::int64_t r = 0; r < rows; ++r) {
          const double ss = impl::sum_squares(want.data() + r * cols, cols);
          EXPECT_NEAR(row_ss[std::size_t(r)], ss, 1e-12 * ss) << format_info(f).name << " row " << r;
          all += ss;
        }
        double total = 0;
        emulated::sum_device(row_ss.data(), rows, &total, nullptr);
        EXPECT_NEAR(total, all, 1e-12 * all);
      }
    }
  }
}

using testing::Case, testing::Fixture, testing::describe, testing::make;

// cuda::LinearKernel's forward pass (linear_kernels_body.cuh's launches) on host memory.
std::vector<float> emulated_forward(const Case& c, const Fixture& f, bool with_branch, cuda::LinearVariant variant) {
  const QuantizedLayer& layer = f.layer;
  emulated::LayerArrays k;
  k.out = c.out, k.in = c.in, k.rank = c.rank, k.chunks = (c.in + 31) / 32;
  emulated::device_format(*c.act1, Rounding::nearest_even, k.qa1);
  emulated::device_format(*c.act2, Rounding::nearest_even, k.qa2);
  k.same_activations = c.act1 == c.act2;
  const runtime::DecodedRows residual = runtime::decode_rows(layer.residual);
  k.residual_codes = residual.codes.data(), k.residual_scales = residual.scales.data();
  runtime::DecodedRows down;
  std::vector<float> up_t;
  if (layer.branch) {
    down = runtime::decode_rows(layer.branch->down);
    up_t = emulated::transposed_up(unpack(layer.branch->up), c.out, k.rank);
    k.down_codes = down.codes.data(), k.down_scales = down.scales.data(), k.up_t = up_t.data();
  }
  std::vector<float> bias_out(std::size_t(c.out), 0.0f);
  std::copy(f.bias.begin(), f.bias.end(), bias_out.begin());
  k.bias = bias_out.data();
  k.smooth = layer.smooth.empty() ? nullptr : layer.smooth.data();
  const auto codes = std::size_t(c.rows * k.chunks * 32), scales = std::size_t(c.rows * k.chunks);
  std::vector<float> y(std::size_t(c.rows * c.out)), t(std::size_t(c.rows * std::max<std::int64_t>(k.rank, 1)));
  std::vector<std::int8_t> a1(codes), a2(codes);
  std::vector<float> s1(scales), s2(scales);
  std::vector<int> sync(std::size_t(emulated::sync_counters(c.rows)), -1);  // the launch must zero it
  emulated::forward_launches(
      k, {f.x.data(), y.data(), t.data(), a1.data(), a2.data(), s1.data(), s2.data(), sync.data()}, c.rows,
      with_branch, variant, nullptr);
  return y;
}

// As LinearKernel.CudaEqualsCpuBitForBit: both GEMM variants, with and without the branch, equal the
// CPU integer path bit for bit (W4A8, W4A4, an odd rank and one over a 64-term slice, partial tiles
// and chunks, smoothing).
TEST(CudaEmulated, LinearEqualsCpuBitForBit) {
  const Case cases[] = {
      {Format::sint4, Format::mxint8, Format::mxint8, Format::mxint8, 70, 130, 257, 86},  // W4A8, rank 86
      {Format::sint4, Format::sint4, Format::sint4, Format::mxint8, 37, 70, 100, 16},     // W4A4
      // An odd rank, with sint4's fp16 scales: MX-only layers can sum exactly in any order, which
      // would hide a term in the wrong chain.
      {Format::sint4, Format::sint4, Format::mxint8, Format::mxint8, 65, 64, 96, 33},
      {Format::mxint4, Format::mxint8, Format::mxint8, Format::sint4, 1, 13, 64, 62},
      {Format::int8_channel, Format::mxint8, Format::sint4, Format::sint4, 65, 64, 160, 0, false},
  };
  unsigned seed = 300;
  for (const Case& c : cases) {
    const Fixture f = make(c, seed++);
    const QuantizedLinearKernel cpu(f.layer, c.act1, c.act2, f.bias);
    for (bool with_branch : {true, false}) {
      std::vector<float> want(std::size_t(c.rows * c.out));
      LinearKernelOptions options;
      options.skip_branch = !with_branch;
      cpu.forward(f.x, c.rows, want, options);
      for (cuda::LinearVariant variant : {cuda::LinearVariant::simple, cuda::LinearVariant::pipelined}) {
        const std::vector<float> got = emulated_forward(c, f, with_branch, variant);
        for (std::size_t i = 0; i < want.size(); ++i)
          ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
              << describe(c) << (with_branch ? "" : " (no branch)") << " at " << i << ": cpu " << want[i]
              << " emulated " << got[i] << ", " << (variant == cuda::LinearVariant::simple ? "simple" : "pipelined")
              << " GEMMs";
      }
    }
  }
}

}  // namespace
}  // namespace loraq
