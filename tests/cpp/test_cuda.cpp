// The CUDA backend against the CPU: the codecs, the quantization-error kernel and an Adam step bit
// for bit, LoRaQ's whole loops within rounding. Needs a GPU: skipped loudly without one (and then
// only the errors of a machine without one are checked).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "codec_cases.hpp"
#include "cuda/cuda_testing.hpp"
#include "dit_weights.hpp"
#include "loraq/cuda.hpp"
#include "loraq/error.hpp"
#include "loraq/format.hpp"
#include "loraq/quantized_layer.hpp"
#include "loraq/recipe.hpp"
#include "methods/adam.hpp"
#include "methods/loraq_impl.hpp"

namespace loraq {
namespace {

namespace impl = methods::loraq_impl;

// Skips (loudly) unless a GPU is there to run on.
#define REQUIRE_GPU()                                                                                      \
  do {                                                                                                     \
    if (!cuda::built()) GTEST_SKIP() << "SKIPPED LOUDLY: built without CUDA (LORAQ_CUDA=OFF)";             \
    if (cuda::device_count() == 0) GTEST_SKIP() << "SKIPPED LOUDLY: no CUDA GPU on this machine: compiled, not run"; \
  } while (0)

using testing::normal_values;

TEST(Cuda, FakeQuantizeMatchesReference) {
  if (!cuda::built()) GTEST_SKIP() << "SKIPPED LOUDLY: built without CUDA (LORAQ_CUDA=OFF)";
  if (cuda::device_count() == 0) {
    std::vector<float> in(32), out(32);
    EXPECT_THROW(cuda::fake_quantize(Format::mxfp4, in, out, 1, 32), Error);
    GTEST_SKIP() << "SKIPPED LOUDLY: no CUDA GPU on this machine: the CUDA codec was compiled but not run";
  }
  std::mt19937 rng(5);
  for (const FormatInfo& info : all_formats()) {
    if (!cuda::supports(info.format)) continue;
    for (std::int64_t cols : testing::kCodecColumns) {
      const std::int64_t rows = 7;
      const std::vector<float> x = testing::codec_input(rows, cols, rng);
      for (Rounding mode : {Rounding::nearest_even, Rounding::nearest_away}) {
        std::vector<float> want(x.size());
        fake_quantize(info.format, x, want, rows, cols, {mode, Isa::scalar, 1});
        for (cuda::CodecKernel kernel : {cuda::CodecKernel::warp, cuda::CodecKernel::vector}) {
          std::vector<float> got(x.size());
          cuda::testing::fake_quantize(info.format, mode, x, got, rows, cols, kernel);
          for (std::size_t i = 0; i < x.size(); ++i)
            ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
                << info.name << " cols " << cols << " i " << i << " seed 5, "
                << (kernel == cuda::CodecKernel::warp ? "warp" : "vector") << " kernel";
        }
        std::vector<float> got(x.size());  // the public entry point, on the default kernel
        cuda::fake_quantize(info.format, x, got, rows, cols, mode);
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float))) << info.name << " cols " << cols;
      }
    }
  }
}

}  // namespace
}  // namespace loraq

namespace loraq {
namespace {

// The variant variables: their values, unset, and a clear error otherwise. Runs without a GPU (and
// without CUDA): the parsing is plain C++.
TEST(Cuda, KernelVariantVariables) {
  EXPECT_EQ(cuda::CodecKernel::warp, cuda::codec_kernel_named(nullptr));
  EXPECT_EQ(cuda::CodecKernel::warp, cuda::codec_kernel_named("warp"));
  EXPECT_EQ(cuda::CodecKernel::vector, cuda::codec_kernel_named("vector"));
  EXPECT_EQ(cuda::LinearVariant::simple, cuda::linear_variant_named(nullptr));
  EXPECT_EQ(cuda::LinearVariant::simple, cuda::linear_variant_named("simple"));
  EXPECT_EQ(cuda::LinearVariant::pipelined, cuda::linear_variant_named("pipelined"));
  auto expect_refused = [](auto parse, const std::string& variable, const std::string& bad, const std::string& expected) {
    try {
      parse(bad.c_str());
      ADD_FAILURE() << "accepted " << variable << "=" << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(variable + "=" + bad + ": expected " + expected), std::string::npos)
          << e.what();
    }
  };
  for (const char* bad : {"", "Vector", "vectors", "pipelined"})
    expect_refused(cuda::codec_kernel_named, "LORAQ_CUDA_CODEC", bad, "warp or vector");
  for (const char* bad : {"", "Pipelined", "vector"})
    expect_refused(cuda::linear_variant_named, "LORAQ_CUDA_LINEAR", bad, "simple or pipelined");
}

// Device names, as --device and the Python package's device= read them (no GPU needed).
TEST(Cuda, DeviceNames) {
  EXPECT_EQ(-1, cuda::device_number("cpu", 3, "--device"));
  EXPECT_EQ(3, cuda::device_number("cuda", 3, "--device"));
  EXPECT_EQ(0, cuda::device_number("cuda:0", 3, "--device"));
  EXPECT_EQ(12, cuda::device_number("cuda:12", 3, "--device"));
  for (const char* bad : {"", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:1x", "cuda: 1", "cuda:99999999999", "cpu:0"}) {
    try {
      cuda::device_number(bad, 0, "device=");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(std::string("device= ") + bad + ": expected cpu, cuda or cuda:N (N a GPU number from 0)", e.what());
    }
  }
}

// Without a GPU the backend says so, by name, instead of failing later.
TEST(Cuda, NoGpuIsAClearError) {
  if (cuda::built() && cuda::device_count() > 0) GTEST_SKIP() << "a GPU is present: the error cannot be provoked";
  try {
    cuda::make_accelerator(0);
    FAIL() << "make_accelerator succeeded without a GPU";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_TRUE(message.find("no CUDA GPU") != std::string::npos || message.find("without CUDA") != std::string::npos)
        << message;
  }
}

TEST(Cuda, DeviceNumberOutOfRangeIsAnError) {
  REQUIRE_GPU();
  EXPECT_THROW(cuda::make_accelerator(cuda::device_count()), Error);
  EXPECT_THROW(cuda::make_accelerator(-1), Error);
}

// Eq. 4's fused pass, E = Q1(W - B) - (W - B), bit for bit against the CPU's codec, and its row sums
// against a double sum (the order differs, so to 1e-12).
TEST(Cuda, QuantizationErrorMatchesCpu) {
  REQUIRE_GPU();
  for (Format f : {Format::sint4, Format::mxint8, Format::mxfp4, Format::mxfp6_e2m3}) {
    for (std::int64_t cols : testing::kErrorColumns) {
      const std::int64_t rows = 5;
      const auto n = std::size_t(rows * cols);
      const std::vector<float> x = normal_values(n, 11), y = normal_values(n, 12, 0.3f);
      const std::vector<float> want = testing::quantization_error_reference(f, x, y, rows, cols);
      for (cuda::CodecKernel kernel : {cuda::CodecKernel::warp, cuda::CodecKernel::vector}) {
        const char* name = kernel == cuda::CodecKernel::warp ? "warp" : "vector";
        std::vector<float> got(n);
        const std::vector<double> row_ss =
            cuda::testing::quantization_error(f, Rounding::nearest_even, x, y, got, rows, cols, kernel);
        for (std::size_t i = 0; i < n; ++i)
          ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
              << format_info(f).name << " cols " << cols << " i " << i << ", " << name << " kernel";
        for (std::int64_t r = 0; r < rows; ++r) {
          const double ss = impl::sum_squares(want.data() + r * cols, cols);
          EXPECT_NEAR(row_ss[std::size_t(r)], ss, 1e-12 * ss) << format_info(f).name << " row " << r << ", " << name;
        }
      }
    }
  }
}

// Five Adam updates from the same gradient: the device's bits are the CPU's.
TEST(Cuda, AdamStepMatchesCpu) {
  REQUIRE_GPU();
  const std::vector<float> g = normal_values(4099, 21, 1e-3f);
  std::vector<float> x_cpu = normal_values(g.size(), 22), x_gpu = x_cpu;
  methods::Adam adam(g.size());
  for (int t = 0; t < 5; ++t) adam.step(x_cpu.data(), g.data(), 1e-3, 1);
  cuda::testing::adam_steps(x_gpu, g, 1e-3, 5);
  for (std::size_t i = 0; i < g.size(); ++i)
    ASSERT_EQ(std::bit_cast<std::uint32_t>(x_gpu[i]), std::bit_cast<std::uint32_t>(x_cpu[i])) << "i " << i;
}

// The whole method on the GPU against the CPU: the same start (same objective to 1e-5 without
// straight-through, 2% with it), the same descent (best objectives within 2%), the same layer
// quality (relative error within 2%), and the same bytes from two GPU runs. Rank 86 and 400 columns: partial blocks in every factor.
TEST(Cuda, LoraqOnGpuMatchesCpu) {
  REQUIRE_GPU();
  const std::int64_t out = 256, in = 400;
  const std::vector<float> w = testing::dit_weight(out, in, 31);
  const std::unique_ptr<Accelerator> device = cuda::make_accelerator(0);
  for (bool straight_through : {false, true}) {
    LayerRecipe recipe;
    recipe.method = "loraq";
    recipe.residual_format = Format::sint4;
    recipe.branch_format = Format::mxfp4;
    recipe.rank = 86;
    recipe.seed = 5;
    impl::Options options;
    options.steps = 200;
    options.rotation_steps = 100;
    options.straight_through = straight_through;
    LayerInput input;
    input.name = "test.weight";
    input.weight = w;
    input.out_features = out;
    input.in_features = in;
    input.recipe = &recipe;
    impl::Report cpu_report, gpu_report, gpu_again;
    const QuantizedLayer cpu = impl::run(input, options, &cpu_report);
    input.accelerator = device.get();
    const QuantizedLayer gpu = impl::run(input, options, &gpu_report);
    const QuantizedLayer gpu2 = impl::run(input, options, &gpu_again);
    const std::string what = "straight_through " + std::to_string(straight_through);
    // Without straight-through the start is the same SVD, so the first objective agrees to GEMM
    // rounding. With it, the rotation runs first, and its gradient jumps where an element of
    // Q2(A) - A changes sign, so CPU and GPU rotations can part by a code flip: 2% then.
    const double start_tolerance = straight_through ? 0.02 : 1e-5;
    EXPECT_NEAR(gpu_report.adam.initial, cpu_report.adam.initial, start_tolerance * cpu_report.adam.initial) << what;
    EXPECT_LT(gpu_report.adam.best, 0.9 * gpu_report.adam.initial) << what << ": Adam did not descend on the GPU";
    EXPECT_NEAR(gpu_report.adam.best, cpu_report.adam.best, 0.02 * cpu_report.adam.best) << what;
    EXPECT_NEAR(gpu_report.rotation.best, cpu_report.rotation.best, 0.02 * cpu_report.rotation.best) << what;
    EXPECT_LE(gpu_report.rotation.best, gpu_report.rotation.initial) << what;
    // impl::run leaves the metrics to quantize_layer: the layer's weight error, computed here.
    const auto relative_error = [&](const QuantizedLayer& q) {
      const std::vector<float> w_eff = effective_weight(q);
      double noise = 0, signal = 0;
      for (std::size_t i = 0; i < w.size(); ++i) {
        noise += (double(w_eff[i]) - w[i]) * (double(w_eff[i]) - w[i]);
        signal += double(w[i]) * w[i];
      }
      return std::sqrt(noise / signal);
    };
    const double cpu_error = relative_error(cpu), gpu_error = relative_error(gpu);
    EXPECT_GT(cpu_error, 0.0) << what;
    EXPECT_NEAR(gpu_error, cpu_error, 0.02 * cpu_error) << what;
    EXPECT_EQ(gpu.residual.codes, gpu2.residual.codes) << what << ": two GPU runs differ";
    EXPECT_EQ(gpu.branch->up.codes, gpu2.branch->up.codes) << what;
    EXPECT_EQ(gpu.branch->down.codes, gpu2.branch->down.codes) << what;
  }
}

}  // namespace
}  // namespace loraq
