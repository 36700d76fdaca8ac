// The CUDA backend on the GPU, at the PixArt-Sigma, SANA and FLUX layer shapes (bench/shapes):
//
//   build/bench/bench_cuda --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//
// codec/<format>/<out>x<in>: fake quantization of a weight, device to device; vs_copy = the time of a
//   device-to-device copy of the same fp32 bytes (the anchor, same run) / the codec's time. Issue 7's
//   target: >= 0.8. codec_vector/...: the same on the vector kernels (src/cuda/kernel_variants.hpp).
// loraq_step/<out>x<in>: one eq. 4 step of the accelerator's loop at rank 128 (sint4 Q1), measured as
//   (time of 60 steps - time of 20 steps) / 40 so that the fixed cost (uploads, handles) cancels;
//   vs_gemms = step time / the time of its three rank-128 GEMMs alone (cuBLAS, same run). Target
//   <= 1.3.
// linear/<out>x<in>/M<tokens>: cuda::LinearKernel W4A8 (sint4 residual, mxint8 activations; mxint8
//   branch at rank 62 with mxint8 activations, SVDQuant's 512-bit budget), PixArt-Sigma shapes only;
//   vs_bf16 = cuBLAS BF16 GEMM time of the same layer (same run) / the kernel's time (issue 8's
//   target: >= 1.5 at M >= 1024), branch = extra time of the branch over the residual alone
//   (target <= 10%). linear_pipelined/...: the same on the pipelined GEMMs (src/cuda/kernel_variants.hpp).
// Without a GPU it says so and registers nothing.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench_shapes.hpp"
#include "cuda/cuda_testing.hpp"
#include "dit_weights.hpp"
#include "loraq/cuda.hpp"

namespace {

constexpr std::int64_t kRank = 128;

void bm_codec(benchmark::State& state, loraq::Format f, Shape s, loraq::cuda::CodecKernel kernel) {
  loraq::cuda::testing::DeviceTimes t;
  for (auto _ : state) {
    t = loraq::cuda::testing::time_fake_quantize(f, s.rows, s.cols, 20, kernel);
    state.SetIterationTime(t.op);
  }
  const double bytes = double(s.rows * s.cols) * 4;
  state.counters["GB/s"] = bytes / t.op / 1e9;
  state.counters["copy_GB/s"] = bytes / t.anchor / 1e9;
  state.counters["vs_copy"] = t.anchor / t.op;
}

double seconds_of(const loraq::Accelerator& device, const std::vector<float>& w, Shape s, int steps) {
  std::vector<float> up(std::size_t(s.rows * kRank), 0.01f), down(std::size_t(kRank * s.cols), 0.01f);
  const loraq::BranchProblem problem{w, s.rows, s.cols, kRank, loraq::Format::sint4, std::nullopt,
                                     loraq::Rounding::nearest_even};
  const auto t0 = std::chrono::steady_clock::now();
  device.optimize_branch(problem, up, down, steps, 1e-4, true);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void bm_loraq_step(benchmark::State& state, Shape s) {
  const std::unique_ptr<loraq::Accelerator> device = loraq::cuda::make_accelerator(0);
  const std::vector<float> w = loraq::testing::dit_weight(s.rows, s.cols, 1);
  // One untimed run first: the process's first one pays the CUDA module loading and this thread's
  // session, which the difference below would count as steps (the H200's first row read 43x).
  seconds_of(*device, w, s, 1);
  double step = 0, gemms = 0;
  for (auto _ : state) {
    step = (seconds_of(*device, w, s, 60) - seconds_of(*device, w, s, 20)) / 40;
    gemms = loraq::cuda::testing::time_step_gemms(s.rows, s.cols, kRank, 20);
    state.SetIterationTime(step);
  }
  state.counters["step_ms"] = step * 1e3;
  state.counters["gemms_ms"] = gemms * 1e3;
  state.counters["vs_gemms"] = step / gemms;
}

void bm_linear(benchmark::State& state, Shape s, std::int64_t tokens, const char* variant) {
  setenv("LORAQ_CUDA_LINEAR", variant, 1);  // read when the kernel is made
  constexpr std::int64_t kBranchRank = 62;
  loraq::QuantizedLayer layer;
  layer.out_features = s.rows;
  layer.in_features = s.cols;
  layer.residual = loraq::pack(loraq::Format::sint4, loraq::testing::dit_weight(s.rows, s.cols, 2), s.rows, s.cols);
  layer.branch = loraq::LowRankBranch{
      loraq::pack(loraq::Format::mxint8, loraq::testing::dit_weight(kBranchRank, s.cols, 3), kBranchRank, s.cols),
      loraq::pack(loraq::Format::mxint8, loraq::testing::dit_weight(s.rows, kBranchRank, 4), s.rows, kBranchRank)};
  const loraq::cuda::LinearKernel kernel(layer, loraq::Format::mxint8, loraq::Format::mxint8);
  double with_branch = 0, residual = 0, bf16 = 0;
  for (auto _ : state) {
    with_branch = kernel.time_forward(tokens, 20);
    residual = kernel.time_forward(tokens, 20, true);
    bf16 = loraq::cuda::time_bf16_gemm(tokens, s.rows, s.cols, 20);
    state.SetIterationTime(with_branch);
  }
  state.counters["bf16_us"] = bf16 * 1e6;
  state.counters["residual_us"] = residual * 1e6;
  state.counters["vs_bf16"] = bf16 / with_branch;
  state.counters["residual_vs_bf16"] = bf16 / residual;
  state.counters["branch"] = with_branch / residual - 1;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (loraq::cuda::device_count() == 0) {
    std::printf("bench_cuda: %s: nothing to measure\n",
                loraq::cuda::built() ? "no CUDA GPU is visible" : "this build has no CUDA backend");
    return 0;
  }
  for (const std::string model : {"pixart_sigma", "sana", "flux"})
    for (const Shape s : load_shapes(model)) {
      const std::string shape = std::to_string(s.rows) + "x" + std::to_string(s.cols);
      for (const loraq::Format f : {loraq::Format::mxfp4, loraq::Format::sint4, loraq::Format::mxint8})
        for (const auto kernel : {loraq::cuda::CodecKernel::warp, loraq::cuda::CodecKernel::vector})
          benchmark::RegisterBenchmark((std::string(kernel == loraq::cuda::CodecKernel::warp ? "codec/" : "codec_vector/") +
                                        std::string(loraq::format_info(f).name) + "/" + shape)
                                           .c_str(),
                                       bm_codec, f, s, kernel)
              ->UseManualTime()
              ->Iterations(3)
              ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(("loraq_step/" + shape).c_str(), bm_loraq_step, s)
          ->UseManualTime()
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
    }
  for (const Shape s : load_shapes("pixart_sigma"))
    for (const std::int64_t tokens : {256, 1024, 4096})
      for (const char* variant : {"simple", "pipelined"})
        benchmark::RegisterBenchmark((std::string(std::string(variant) == "simple" ? "linear/" : "linear_pipelined/") +
                                      std::to_string(s.rows) + "x" + std::to_string(s.cols) + "/M" +
                                      std::to_string(tokens))
                                         .c_str(),
                                     bm_linear, s, tokens, variant)
            ->UseManualTime()
            ->Iterations(1)
            ->Unit(benchmark::kMicrosecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
