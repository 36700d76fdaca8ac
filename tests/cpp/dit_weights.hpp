// Synthetic weights with the statistics of trained DiT linear layers where quantization cares:
// Laplace tails, 1 input channel in 64 eight times larger (the outliers SVDQuant's branch absorbs),
// rows of log-normal scale, RMS about 1/sqrt(in). tools/make_model fills its checkpoints' weights with
// dit_weight too, so tests and benchmarks see what `loraq quantize` sees on generated checkpoints. splitmix64
// throughout: fully specified, the same values on every platform.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace loraq::testing {

struct SplitMix64 {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1p-53; }
  double normal() {  // Box-Muller
    const double u = uniform() + 0x1p-54, v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

// [out, in], row-major.
inline std::vector<float> dit_weight(std::int64_t out, std::int64_t in, std::uint64_t seed) {
  SplitMix64 rng{seed};
  std::vector<float> w(std::size_t(out * in));
  std::vector<double> column_scale(std::size_t(in), 1.0);
  for (double& s : column_scale) s = rng.uniform() < 1.0 / 64 ? 8.0 : 1.0;
  const double base = 1.0 / std::sqrt(double(in));
  for (std::int64_t r = 0; r < out; ++r) {
    const double row_scale = base * std::exp(0.3 * rng.normal());
    for (std::int64_t c = 0; c < in; ++c) {
      const std::uint64_t bits = rng.next();
      const double magnitude = -std::log((double(bits >> 12) + 0.5) * 0x1p-52) * 0.7071067811865476;
      w[std::size_t(r * in + c)] =
          float(row_scale * column_scale[std::size_t(c)] * ((bits & 1) ? -magnitude : magnitude));
    }
  }
  return w;
}

}  // namespace loraq::testing
