// The CUDA codec is bit-identical to the CPU reference. Needs a GPU: skipped loudly without one.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "loraq/cuda.hpp"
#include "loraq/error.hpp"
#include "loraq/format.hpp"

namespace loraq {
namespace {

TEST(Cuda, MxFakeQuantizeMatchesReference) {
  if (!cuda::built()) GTEST_SKIP() << "SKIPPED LOUDLY: built without CUDA (LORAQ_CUDA=OFF)";
  if (cuda::device_count() == 0) {
    std::vector<float> in(32), out(32);
    EXPECT_THROW(cuda::fake_quantize(Format::mxfp4, in, out, 1, 32), Error);
    GTEST_SKIP() << "SKIPPED LOUDLY: no CUDA GPU on this machine: the CUDA codec was compiled but not run";
  }
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const FormatInfo& info : all_formats()) {
    if (!cuda::supports(info.format)) continue;
    for (std::int64_t cols : {1, 31, 32, 33, 86, 1152}) {
      const std::int64_t rows = 7;
      std::vector<float> x(std::size_t(rows * cols));
      for (float& v : x) v = normal(rng) * std::ldexp(1.0f, int(rng() % 40) - 20);
      x[0] = std::nanf("");
      for (Rounding mode : {Rounding::nearest_even, Rounding::nearest_away}) {
        std::vector<float> want(x.size()), got(x.size());
        fake_quantize(info.format, x, want, rows, cols, {mode, Isa::scalar, 1});
        cuda::fake_quantize(info.format, x, got, rows, cols, mode);
        for (std::size_t i = 0; i < x.size(); ++i)
          ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i]))
              << info.name << " cols " << cols << " i " << i << " seed 5";
      }
    }
  }
}

}  // namespace
}  // namespace loraq
