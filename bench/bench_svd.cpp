// Truncated SVD at PixArt-Sigma shapes: LAPACK's full sgesdd against the randomized range finder
// (svd_randomized/.../p<oversampling>/q<power iterations>) and block Krylov
// (svd_block_krylov/.../b<block size>/q<iterations>) of src/linalg/svd.cpp, with SGEMM's GFLOP/s
// at the sketch's shape as the anchor (same run, same threads).
//
//   build/bench/bench_svd --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Matrices, one per shape, generated once:
//   dit:      tests/cpp/dit_weight (Laplace tails, outlier input channels, row scales): the
//             statistics of trained DiT weights, and a slowly decaying spectrum (hard for a sketch);
//   decaying: the same singular vectors with s_i = 1 / i (a fast power-law decay).
// Counters of each randomized run (errors are deterministic: one run gives them):
//   speedup:      median full-SVD time of the same matrix (3 runs at rank 128, measured in this
//                 process) / the randomized time per iteration;
//   max_rel_err:  max over the `rank` values of |s_rand - s_full| / s_full (the issue's < 1%);
//   top32_rel_err: the same over the 32 largest values;
//   frob_excess:  ||A - A_rand||_F / ||A - A_full||_F - 1, the truncation error the methods see.
// The full SVD always runs on one thread (OpenBLAS is held serial for determinism, see
// src/linalg/blas_support.hpp); /threads:N is the randomized one's GEMM threads.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "dit_weights.hpp"
#include "bench_shapes.hpp"
#include "loraq/linalg.hpp"

namespace {

namespace la = loraq::linalg;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One test matrix with its full SVD (all min(rows, cols) values) and full-SVD timings.
struct Case {
  Shape shape;
  std::vector<float> a;
  la::Svd full;             // every singular value
  double full_seconds = 0;  // median of 3 full truncated SVDs (gesdd computes every
                            // value whatever the rank, so one figure serves all ranks)
};

Case make_case(const Shape& s, bool decaying) {
  Case c{s, loraq::testing::dit_weight(s.rows, s.cols, 20260101 + std::uint64_t(s.rows * 7 + s.cols)), {}, 0};
  const std::int64_t p = std::min(s.rows, s.cols);
  c.full = la::truncated_svd(c.a, s.rows, s.cols, p, {la::SvdAlgorithm::full, 0, 0, 0});
  if (decaying) {  // A = U diag(1 / i) V^T with the dit matrix's own singular vectors
    std::vector<float> us = c.full.u;
    for (std::int64_t i = 0; i < s.rows; ++i)
      for (std::int64_t k = 0; k < p; ++k) us[std::size_t(i * p + k)] /= float(k + 1);
    la::gemm(false, false, s.rows, s.cols, p, 1.0f, us.data(), p, c.full.vt.data(), s.cols, 0.0f, c.a.data(), s.cols);
    c.full = la::truncated_svd(c.a, s.rows, s.cols, p, {la::SvdAlgorithm::full, 0, 0, 0});
  }
  return c;
}

Case& case_for(const Shape& s, bool decaying) {
  static std::map<std::tuple<std::int64_t, std::int64_t, bool>, Case> cache;
  const auto key = std::make_tuple(s.rows, s.cols, decaying);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make_case(s, decaying)).first;
  return it->second;
}

double full_seconds(Case& c, std::int64_t rank) {
  if (c.full_seconds > 0) return c.full_seconds;
  std::vector<double> times;
  for (int i = 0; i < 3; ++i) {
    const auto start = std::chrono::steady_clock::now();
    la::Svd svd = la::truncated_svd(c.a, c.shape.rows, c.shape.cols, rank, {la::SvdAlgorithm::full, 0, 0, 0});
    benchmark::DoNotOptimize(svd.s.data());
    times.push_back(seconds_since(start));
  }
  std::sort(times.begin(), times.end());
  return c.full_seconds = times[1];
}

// ||A - U diag(S) Vt||_F in double, the product formed by gemm.
double truncation_error(const Case& c, const la::Svd& svd) {
  std::vector<float> us = svd.u, approx(c.a.size());
  for (std::int64_t i = 0; i < svd.rows; ++i)
    for (std::int64_t k = 0; k < svd.rank; ++k) us[std::size_t(i * svd.rank + k)] *= svd.s[std::size_t(k)];
  la::gemm(false, false, svd.rows, svd.cols, svd.rank, 1.0f, us.data(), svd.rank, svd.vt.data(), svd.cols, 0.0f,
           approx.data(), svd.cols);
  double sum = 0;
  for (std::size_t i = 0; i < approx.size(); ++i) {
    const double d = double(c.a[i]) - double(approx[i]);
    sum += d * d;
  }
  return std::sqrt(sum);
}

void bm_full(benchmark::State& state, Shape s, bool decaying, std::int64_t rank) {
  Case& c = case_for(s, decaying);
  for (auto _ : state) {
    la::Svd svd = la::truncated_svd(c.a, s.rows, s.cols, rank, {la::SvdAlgorithm::full, 0, 0, 0});
    benchmark::DoNotOptimize(svd.s.data());
  }
}

void bm_randomized(benchmark::State& state, Shape s, bool decaying, la::SvdAlgorithm algorithm, std::int64_t rank,
                   int oversampling, int power_iterations, int block_size) {
  Case& c = case_for(s, decaying);
  const int threads = int(state.range(0));
  const double full = full_seconds(c, rank);
  la::set_blas_threads(threads);
  const la::SvdOptions options{algorithm, oversampling, power_iterations, 1, block_size};
  la::Svd svd;
  double total = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    svd = la::truncated_svd(c.a, s.rows, s.cols, rank, options);
    benchmark::DoNotOptimize(svd.s.data());
    const double t = seconds_since(start);
    state.SetIterationTime(t);
    total += t;
  }
  double worst = 0, worst_top32 = 0;
  for (std::int64_t i = 0; i < rank; ++i) {
    const double e =
        std::abs(double(svd.s[std::size_t(i)]) - double(c.full.s[std::size_t(i)])) / double(c.full.s[std::size_t(i)]);
    worst = std::max(worst, e);
    if (i < 32) worst_top32 = std::max(worst_top32, e);
  }
  la::Svd truncated_full = c.full;  // the exact rank-r truncation, from the all-values SVD
  const std::int64_t p = c.full.rank;
  truncated_full.rank = rank;
  truncated_full.s.resize(std::size_t(rank));
  truncated_full.vt.resize(std::size_t(rank * s.cols));
  truncated_full.u.clear();
  for (std::int64_t i = 0; i < s.rows; ++i)
    for (std::int64_t k = 0; k < rank; ++k) truncated_full.u.push_back(c.full.u[std::size_t(i * p + k)]);
  state.counters["speedup"] = full / (total / double(state.iterations()));
  state.counters["full_s"] = full;
  state.counters["max_rel_err"] = worst;
  state.counters["top32_rel_err"] = worst_top32;
  state.counters["frob_excess"] = truncation_error(c, svd) / truncation_error(c, truncated_full) - 1;
  la::set_blas_threads(omp_get_max_threads());
}

// The anchor: SGEMM of the sketch's shape, A [rows, cols] times [cols, rank + 10], on N threads.
void bm_sgemm(benchmark::State& state, Shape s, std::int64_t width) {
  const int threads = int(state.range(0));
  la::set_blas_threads(threads);
  const Case& c = case_for(s, false);
  std::vector<float> b(std::size_t(s.cols * width), 0.5f), out(std::size_t(s.rows * width));
  for (auto _ : state) {
    la::gemm(false, false, s.rows, width, s.cols, 1.0f, c.a.data(), s.cols, b.data(), width, 0.0f, out.data(), width);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * double(s.rows) * double(s.cols) * double(width) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  la::set_blas_threads(omp_get_max_threads());
}

}  // namespace

int main(int argc, char** argv) {
  loraq::linalg::use_widest_blas_kernels(argv);  // the anchor is OpenBLAS at its best on this CPU
  const int max_threads = omp_get_max_threads();
  const std::vector<std::int64_t> thread_counts =
      max_threads > 1 ? std::vector<std::int64_t>{1, max_threads} : std::vector<std::int64_t>{1};
  for (const Shape& s : load_shapes()) {
    const std::string shape = std::to_string(s.rows) + "x" + std::to_string(s.cols);
    benchmark::RegisterBenchmark(("sgemm/" + shape + "/n138").c_str(), bm_sgemm, s, std::int64_t(138))
        ->ArgsProduct({thread_counts})
        ->ArgName("threads")
        ->UseRealTime();
    for (bool decaying : {false, true}) {
      const std::string matrix = decaying ? "decaying" : "dit";
      benchmark::RegisterBenchmark(("svd_full/" + matrix + "/" + shape + "/rank128").c_str(), bm_full, s, decaying,
                                   std::int64_t(128))
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      struct Config {
        la::SvdAlgorithm algorithm;
        std::int64_t rank;
        int oversampling, power_iterations, block_size;
      };
      // randomized: sketch rank + p, q power iterations; block_krylov: blocks of b, q iterations,
      // a Krylov space of b (q + 1) columns.
      constexpr la::SvdAlgorithm kSubspace = la::SvdAlgorithm::randomized, kKrylov = la::SvdAlgorithm::block_krylov;
      for (const Config& cfg :
           {Config{kSubspace, 128, 10, 1, 0}, Config{kSubspace, 128, 10, 2, 0}, Config{kSubspace, 128, 10, 3, 0},
            Config{kSubspace, 128, 64, 3, 0}, Config{kSubspace, 32, 10, 2, 0}, Config{kKrylov, 128, 10, 2, 48},
            Config{kKrylov, 128, 10, 4, 32}, Config{kKrylov, 128, 10, 3, 64}, Config{kKrylov, 128, 10, 4, 64},
            Config{kKrylov, 128, 10, 5, 64}, Config{kKrylov, 128, 10, 7, 48}, Config{kKrylov, 32, 10, 2, 32},
            Config{kKrylov, 32, 10, 5, 16}}) {
        const bool krylov = cfg.algorithm == kKrylov;
        const std::string name =
            std::string(krylov ? "svd_block_krylov/" : "svd_randomized/") + matrix + "/" + shape + "/rank" +
            std::to_string(cfg.rank) +
            (krylov ? "/b" + std::to_string(cfg.block_size) : "/p" + std::to_string(cfg.oversampling)) + "/q" +
            std::to_string(cfg.power_iterations);
        benchmark::RegisterBenchmark(name.c_str(), bm_randomized, s, decaying, cfg.algorithm, cfg.rank,
                                     cfg.oversampling, cfg.power_iterations, cfg.block_size)
            ->ArgsProduct({thread_counts})
            ->ArgName("threads")
            ->Unit(benchmark::kMillisecond)
            ->UseManualTime();
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("anchor", "sgemm [rows, cols] x [cols, 138] on the same threads, same run");
  benchmark::AddCustomContext("full_svd", "LAPACK sgesdd, one thread (OpenBLAS held serial)");
  benchmark::AddCustomContext("openblas_kernels", loraq::linalg::running_blas_core());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
