// The cost of loraq (src/methods/loraq.cpp) per PixArt-Sigma layer shape, at the paper's main
// configuration: rank 128 with a 4-bit branch (about SVDQuant's 512 bits per channel), Q1 = Q2.
//
//   build/bench/bench_loraq --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// adam_step: one step of eq. 4 (B = up down, E = Q1(W - B) + B - W, the two gradient GEMMs, Adam),
//   timed alternately with its three rank-r GEMMs alone (the anchor, same run, same threads);
//   vs_gemms = step time / GEMM time, the target being <= 1.3.
// rotation_step: one step of eq. 7 (two small GEMMs, Q2 of both factors, two gradient GEMMs, the
//   Cayley update in double).
// method: the whole method, projected: the fixed part (SVD, packing, final residual) measured with 0
//   steps, plus 1000 x and 500 x the per-step times of a run with 50 Adam and 25 rotation steps
//   (steps cost the same from first to last). LORAQ_BENCH_FULL=1 adds method_full: the real
//   1000 + 500 steps, one run per shape.
#include <benchmark/benchmark.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "dit_weights.hpp"
#include "bench_shapes.hpp"
#include "loraq/format.hpp"
#include "loraq/linalg.hpp"
#include "loraq/quantized_layer.hpp"
#include "loraq/recipe.hpp"
#include "methods/adam.hpp"
#include "methods/loraq_impl.hpp"

namespace impl = loraq::methods::loraq_impl;

namespace {

constexpr std::int64_t kRank = 128;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One Adam step against its three GEMMs, alternating so that both see the same machine state.
void bm_adam_step(benchmark::State& state, loraq::Format q1, Shape s) {
  const std::int64_t out = s.rows, in = s.cols;
  const std::vector<float> w = loraq::testing::dit_weight(out, in, 1);
  impl::Factors f = impl::svd_init(w, out, in, kRank, 0);
  impl::BranchObjective objective(w, out, in, kRank, q1, std::nullopt, {});
  loraq::methods::Adam adam_up(f.up.size()), adam_down(f.down.size());
  std::vector<float> grad_up(f.up.size()), grad_down(f.down.size()), e(std::size_t(out * in));
  const int threads = omp_get_max_threads();
  double step_seconds = 0, gemm_seconds = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    loraq::linalg::gemm(false, false, out, in, kRank, 1.0f, f.up.data(), kRank, f.down.data(), in, 0.0f, e.data(), in);
    loraq::linalg::gemm(false, true, out, kRank, in, 1.0f, e.data(), in, f.down.data(), in, 0.0f, grad_up.data(),
                        kRank);
    loraq::linalg::gemm(true, false, kRank, in, out, 1.0f, f.up.data(), kRank, e.data(), in, 0.0f, grad_down.data(),
                        in);
    benchmark::ClobberMemory();
    gemm_seconds += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    objective.evaluate(f.up.data(), f.down.data(), grad_up.data(), grad_down.data());
    adam_up.step(f.up.data(), grad_up.data(), 1e-4, threads);
    adam_down.step(f.down.data(), grad_down.data(), 1e-4, threads);
    benchmark::ClobberMemory();
    const double t = seconds_since(t0);
    step_seconds += t;
    state.SetIterationTime(t);
  }
  const double flops = 3.0 * 2.0 * double(out) * double(in) * double(kRank) * double(state.iterations());
  state.counters["vs_gemms"] = step_seconds / gemm_seconds;
  state.counters["gemm_ms"] = 1e3 * gemm_seconds / double(state.iterations());
  state.counters["gemm_GFLOPs"] = flops / gemm_seconds / 1e9;
}

void bm_rotation_step(benchmark::State& state, loraq::Format q2, Shape s) {
  const std::int64_t out = s.rows, in = s.cols;
  const std::vector<float> w = loraq::testing::dit_weight(out, in, 1);
  const impl::Factors f = impl::svd_init(w, out, in, kRank, 0);
  impl::RotationObjective objective(f, q2, {});
  std::vector<double> omega(std::size_t(kRank * kRank), 0.0), grad(omega.size());
  for (std::int64_t i = 0; i < kRank; ++i) omega[std::size_t(i * kRank + i)] = 1.0;
  for (auto _ : state) {
    objective.evaluate(omega, grad.data());
    impl::cayley_step(omega, grad, kRank, 0.1);
    benchmark::DoNotOptimize(omega.data());
  }
}

loraq::LayerRecipe recipe_for(loraq::Format q) {
  loraq::LayerRecipe r;
  r.method = "loraq";
  r.residual_format = q;
  r.branch_format = q;
  r.rank = int(kRank);
  return r;
}

double time_run(const std::vector<float>& w, Shape s, const loraq::LayerRecipe& recipe, const impl::Options& options) {
  loraq::LayerInput input;
  input.name = "bench.weight";
  input.weight = w;
  input.out_features = s.rows;
  input.in_features = s.cols;
  input.recipe = &recipe;
  const auto t0 = std::chrono::steady_clock::now();
  const loraq::QuantizedLayer layer = impl::run(input, options);
  benchmark::DoNotOptimize(layer.residual.codes.data());
  return seconds_since(t0);
}

// Projected 1000 + 500 steps: fixed part + 20 x (a 50 + 25 step run - the fixed part).
void bm_method_projected(benchmark::State& state, loraq::Format q, Shape s) {
  const std::vector<float> w = loraq::testing::dit_weight(s.rows, s.cols, 1);
  const loraq::LayerRecipe recipe = recipe_for(q);
  impl::Options none, some;
  none.steps = 0, none.rotation_steps = 0;
  some.steps = 50, some.rotation_steps = 25;
  double fixed = 0, per_step_part = 0;
  for (auto _ : state) {
    const double t_fixed = time_run(w, s, recipe, none);
    const double t_some = time_run(w, s, recipe, some);
    const double projected = t_fixed + 20.0 * (t_some - t_fixed);
    fixed += t_fixed;
    per_step_part += t_some - t_fixed;
    state.SetIterationTime(projected);
  }
  state.counters["fixed_s"] = fixed / double(state.iterations());
  state.counters["steps_1000_500_s"] = 20.0 * per_step_part / double(state.iterations());
}

void bm_method_full(benchmark::State& state, loraq::Format q, Shape s) {
  const std::vector<float> w = loraq::testing::dit_weight(s.rows, s.cols, 1);
  const loraq::LayerRecipe recipe = recipe_for(q);
  for (auto _ : state) state.SetIterationTime(time_run(w, s, recipe, impl::Options{}));
}

}  // namespace

int main(int argc, char** argv) {
  loraq::linalg::use_widest_blas_kernels(argv);  // the GEMMs at OpenBLAS's best on this CPU
  // OpenBLAS (its pthreads build, which linalg links) and libgomp keep separate thread pools. With
  // libgomp's default active wait, its idle threads spin through the GEMMs that follow each parallel
  // loop and take the cores from OpenBLAS's workers (measured at 4608 x 1152 on 2 cores: each GEMM
  // 24 ms instead of 16). We time the method, not that contention: unless the caller chose a policy,
  // re-run this program with OMP_WAIT_POLICY=passive (libgomp reads it once, when it loads).
  if (!std::getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "passive", 1) == 0) execv("/proc/self/exe", argv);
  loraq::linalg::set_blas_threads(omp_get_max_threads());
  const bool full = std::getenv("LORAQ_BENCH_FULL") && std::string(std::getenv("LORAQ_BENCH_FULL")) == "1";
  for (const Shape& s : load_shapes()) {
    const std::string shape = std::to_string(s.rows) + "x" + std::to_string(s.cols);
    for (loraq::Format q : {loraq::Format::mxfp4, loraq::Format::sint4}) {
      const std::string name(loraq::format_info(q).name);
      benchmark::RegisterBenchmark(("adam_step/" + name + "/" + shape).c_str(), bm_adam_step, q, s)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("rotation_step/" + name + "/" + shape).c_str(), bm_rotation_step, q, s)
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("method/" + name + "/" + shape).c_str(), bm_method_projected, q, s)
          ->UseManualTime()
          ->Iterations(1)
          ->Unit(benchmark::kSecond);
      if (full)
        benchmark::RegisterBenchmark(("method_full/" + name + "/" + shape).c_str(), bm_method_full, q, s)
            ->UseManualTime()
            ->Iterations(1)
            ->Unit(benchmark::kSecond);
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("threads", std::to_string(omp_get_max_threads()) + " (OpenMP and BLAS)");
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  benchmark::AddCustomContext("OMP_WAIT_POLICY", policy ? policy : "(libgomp default)");
  benchmark::AddCustomContext("openblas_kernels", loraq::linalg::running_blas_core());
  benchmark::AddCustomContext(
      "rank", std::to_string(kRank) + ", Q2 = Q1, weights with DiT statistics (tests/cpp/dit_weights.hpp)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
