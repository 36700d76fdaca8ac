// Dense linear algebra for the methods: GEMM and truncated SVD over row-major fp32 matrices,
// on OpenBLAS/LAPACK (src/linalg). Every routine is deterministic: the same inputs and seed give
// the same bits, whatever the OpenMP or BLAS thread count.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace loraq::linalg {

// C[m, n] = alpha * op(A) op(B) + beta * C, row-major, op(X) = X or X^T (cblas_sgemm).
// lda/ldb/ldc are the row strides of A, B and C as stored. Throws Error on a negative size or a
// stride below the stored row length.
void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);

// The same in double for small matrices (LoRaQ's rotation): one serial cblas_dgemm.
void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
          const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c,
          std::int64_t ldc);

// Solves A X = B in place of B: A [n, n] and B [n, nrhs] row-major, by LU with partial pivoting
// (LAPACK dgesv, serial; A is overwritten). Throws Error when A is singular or the sizes disagree.
void solve(std::span<double> a, std::span<double> b, std::int64_t n, std::int64_t nrhs);

// A ~ U diag(S) V^T with the `rank` largest singular values, in descending order.
struct Svd {
  std::int64_t rows = 0, cols = 0, rank = 0;
  std::vector<float> u;   // [rows, rank]
  std::vector<float> s;   // [rank]
  std::vector<float> vt;  // [rank, cols]
};

enum class SvdAlgorithm : std::uint8_t {
  automatic,     // randomized when rank + oversampling <= min(rows, cols) / 4, else full (see svd.cpp)
  full,          // LAPACK gesdd of the whole matrix, truncated
  randomized,    // Halko, Martinsson & Tropp: range finder with oversampling and power iterations
  block_krylov,  // Musco & Musco: block Lanczos, Rayleigh-Ritz on the whole Krylov space
};
// On PixArt-Sigma's 1152 x 4608 at rank 128, one thread (docs/performance.md has the table):
// randomized with the defaults (oversampling 10, 2 power iterations) is about 7x faster than full;
// its truncation error stays within about 1% of the optimum and the top 32 values within 0.01%, but
// on weight-like (slowly decaying) spectra the values near `rank` come out up to 10% low.
// block_krylov gets much more out of each product with the matrix: blocks of 64 and 3 iterations
// take 25% less time than randomized's defaults, with 7% value error and half the truncation
// excess; 5 iterations bring all 128 values within 1% at about 6x faster than full. Use full, or
// block_krylov with enough iterations, where the values themselves matter (bench/bench_svd.cpp
// measures all).

struct SvdOptions {
  SvdAlgorithm algorithm = SvdAlgorithm::automatic;
  int oversampling = 10;     // extra columns of the random sketch
  int power_iterations = 2;  // subspace iterations (each re-orthonormalized); block_krylov: its
                             // iterations, a Krylov space of block_size * (power_iterations + 1)
                             // columns (raised to hold rank + oversampling, cut at min(rows, cols))
  std::uint64_t seed = 0;    // of the Gaussian sketch
  int block_size = 0;        // block_krylov: columns per block; 0: ceil((rank + oversampling) / 3)
};

// Throws Error when rank is not in [1, min(rows, cols)] or the matrix holds NaN or Inf.
Svd truncated_svd(std::span<const float> a, std::int64_t rows, std::int64_t cols, std::int64_t rank,
                  const SvdOptions& options = {});

// Threads for this thread's later linalg calls (thread-local; unset, OpenMP's default). linalg
// splits its GEMMs into panels fixed by the shape and runs them on this many OpenMP threads;
// OpenBLAS itself is held at one thread for the whole process, because its threaded kernels round
// differently from its serial ones. So results never depend on this count (tested), and calling
// linalg from several threads at once is safe. The quantize pipeline runs a few layers at once,
// each with its share of the cores (QuantOptions::threads); the SVD methods set this count to that
// share for their duration. LAPACK steps (QR, the SVD of the small or full matrix) run serially.
// Throws Error when threads < 1.
void set_blas_threads(int threads);
int blas_threads();  // the count this thread's calls use

// OpenBLAS's kernels. Its DYNAMIC_ARCH builds (Debian's) choose them once, when the library loads,
// from the CPU model; a CPU newer than the library gets its SSE3 "Prescott" kernels, several times
// slower (blas_core.cpp). running_blas_core(): the kernels chosen (openblas_get_corename(), e.g.
// "Prescott", "Haswell", "SkylakeX"). wanted_blas_core(): "" when the environment variable
// OPENBLAS_CORETYPE is set (that choice stands) or the CPU has neither AVX2 nor AVX-512, else the
// widest kernels this CPU runs: "SkylakeX" (AVX-512) or "Haswell" (AVX2 + FMA). loraq/__init__.py
// applies the same rule before the Python module loads OpenBLAS, so that the command and the Python
// package compute with the same kernels, hence the same bits.
std::string running_blas_core();
std::string wanted_blas_core();
// For a program's main(), first thing: when the wanted kernels are not the running ones, sets
// OPENBLAS_CORETYPE and re-executes the program in place (/proc/self/exe, the same arguments and
// process id). Returns when there is nothing to do, or when the exec fails (the program then runs
// on the kernels already loaded).
void use_widest_blas_kernels(char** argv);

}  // namespace loraq::linalg
