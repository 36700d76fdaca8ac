// The quantized layers the linear-kernel tests run: a layer's formats, shape and rank (Case), and the
// packed layer, input and bias generated from it (make). Shared by the CPU tests
// (test_linear_kernel.cpp) and the emulated CUDA ones (test_cuda_emulated.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "loraq/format.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq::testing {

struct Case {
  Format residual, branch;
  std::optional<Format> act1, act2;  // unset: fp32 activations
  std::int64_t rows, out, in, rank;
  bool smooth = true, bias = true;
  float x_scale = 1.0f;  // multiplies the generated inputs
  std::optional<Format> act_t = std::nullopt;  // Qt, the intermediate's format (unset: T in fp32)
};

inline std::string name_of(std::optional<Format> f) { return f ? std::string(format_info(*f).name) : "fp32"; }

inline std::string describe(const Case& c) {
  return name_of(c.residual) + "/" + name_of(c.branch) + " A " + name_of(c.act1) + "/" + name_of(c.act2) +
         (c.act_t ? " T " + name_of(c.act_t) : "") + " M=" +
         std::to_string(c.rows) + " out=" + std::to_string(c.out) + " in=" + std::to_string(c.in) +
         " r=" + std::to_string(c.rank);
}

inline std::vector<float> heavy_tailed(std::int64_t n, std::mt19937& rng) {
  std::student_t_distribution<float> dist(4.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

struct Fixture {
  QuantizedLayer layer;
  std::vector<float> x, bias;
};

inline Fixture make(const Case& c, unsigned seed) {
  std::mt19937 rng(seed);
  Fixture f;
  f.layer.out_features = c.out;
  f.layer.in_features = c.in;
  f.layer.residual = pack(c.residual, heavy_tailed(c.out * c.in, rng), c.out, c.in);
  if (c.rank > 0)
    f.layer.branch = LowRankBranch{pack(c.branch, heavy_tailed(c.rank * c.in, rng), c.rank, c.in),
                                   pack(c.branch, heavy_tailed(c.out * c.rank, rng), c.out, c.rank)};
  std::uniform_real_distribution<float> positive(0.25f, 4.0f);
  if (c.smooth)
    for (std::int64_t i = 0; i < c.in; ++i) f.layer.smooth.push_back(positive(rng));
  f.x = heavy_tailed(c.rows * c.in, rng);
  for (float& v : f.x) v *= c.x_scale;
  if (c.bias) f.bias = heavy_tailed(c.out, rng);
  return f;
}

}  // namespace loraq::testing
