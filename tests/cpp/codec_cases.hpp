// The inputs and CPU references that the CUDA codec tests share: on a GPU (test_cuda.cpp) and on the
// CPU under the SIMT emulation (test_cuda_emulated.cpp), so that both check the same cases.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "loraq/format.hpp"

namespace loraq::testing {

// Column counts for both codec layouts: not a multiple of 4 (the warp layout only), and multiples of
// 4 with a partial block, a partial 128-value segment, whole segments, and more segments than a warp
// takes (the vector layout).
inline constexpr std::int64_t kCodecColumns[] = {1, 31, 32, 33, 86, 100, 260, 388, 1152, 1156};
// For the quantization error; 2180 has more segments than a thread block's warps take at once.
inline constexpr std::int64_t kErrorColumns[] = {33, 64, 100, 1152, 2180};

inline std::vector<float> normal_values(std::size_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// x [rows, cols] for fake quantization: normal values scaled over 40 binades, a NaN first, and -Inf
// in row 1 past its first 128-value segment where the rows are that long.
inline std::vector<float> codec_input(std::int64_t rows, std::int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(std::size_t(rows * cols));
  for (float& v : x) v = normal(rng) * std::ldexp(1.0f, int(rng() % 40) - 20);
  x[0] = std::nanf("");
  if (cols > 200 && rows > 1) x[std::size_t(cols + 150)] = -INFINITY;
  return x;
}

// e = Q(t) - t for t = x - y, by the CPU's scalar codec: the fused quantization error's reference.
inline std::vector<float> quantization_error_reference(Format f, const std::vector<float>& x,
                                                       const std::vector<float>& y, std::int64_t rows,
                                                       std::int64_t cols) {
  std::vector<float> t(x.size()), q(x.size()), e(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) t[i] = x[i] - y[i];
  fake_quantize(f, t, q, rows, cols, {Rounding::nearest_even, Isa::scalar, 1});
  for (std::size_t i = 0; i < x.size(); ++i) e[i] = q[i] - t[i];
  return e;
}

}  // namespace loraq::testing
