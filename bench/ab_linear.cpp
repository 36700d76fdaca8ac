// A/B of two builds of the linear kernels on a noisy shared machine, where bench_linear's two-thread
// medians move by 10-30% within minutes. One thread, W4A8 (sint4 residual, mxint8 activations;
// mxint8 branch at rank 62), M = 1024: each run prints the minimum and the median of `calls`
// forward calls for the residual alone and with the branch. Run the two binaries alternately,
// several times each, and compare the medians of their runs' minima (docs/performance.md):
//
//   for i in 1 2 3 4 5 6; do ./old/ab_linear; ./new/ab_linear; done
//
// Arguments (optional): out in [calls], default 1152 1152 15.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "loraq/format.hpp"
#include "loraq/linear_kernel.hpp"
#include "loraq/quantized_layer.hpp"

int main(int argc, char** argv) {
  using namespace loraq;
  const std::int64_t out = argc > 1 ? std::atoll(argv[1]) : 1152, in = argc > 2 ? std::atoll(argv[2]) : 1152;
  const int calls = argc > 3 ? std::atoi(argv[3]) : 15;
  constexpr std::int64_t kTokens = 1024, kRank = 62;
  if (out <= 0 || in <= 0 || calls <= 0) {
    std::fprintf(stderr, "usage: ab_linear [out in [calls]] (positive)\n");
    return 2;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  auto random = [&](std::int64_t n) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = normal(rng);
    return v;
  };
  QuantizedLayer layer;
  layer.out_features = out;
  layer.in_features = in;
  layer.residual = pack(Format::sint4, random(out * in), out, in);
  layer.branch = LowRankBranch{pack(Format::mxint8, random(kRank * in), kRank, in),
                               pack(Format::mxint8, random(out * kRank), out, kRank)};
  const QuantizedLinearKernel kernel(layer, Format::mxint8, Format::mxint8, {});
  const std::vector<float> x = random(kTokens * in);
  std::vector<float> y(static_cast<std::size_t>(kTokens * out));
  LinearKernelOptions options;
  options.threads = 1;
  for (const bool residual_only : {true, false}) {
    options.skip_branch = residual_only;
    kernel.forward(x, kTokens, y, options);  // warm-up: per-thread buffers
    std::vector<double> ms;
    for (int i = 0; i < calls; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      kernel.forward(x, kTokens, y, options);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("%s %lldx%lld M%lld: min %.2f ms, median %.2f ms (%s)\n", residual_only ? "residual" : "with branch",
                static_cast<long long>(out), static_cast<long long>(in), static_cast<long long>(kTokens), ms.front(),
                ms[ms.size() / 2], kernel.describe(options).c_str());
  }
}
