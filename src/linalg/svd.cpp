// Truncated SVD: LAPACK sgesdd of the whole matrix, or Halko, Martinsson & Tropp's randomized range
// finder ("Finding structure with randomness", 2011, Algorithms 4.4 and 5.1) followed by sgesdd of
// the small projected matrix.
//
// LAPACK is column-major. A row-major [rows, cols] matrix is, in the same memory, the column-major
// matrix A^T [cols, rows]; the calls below work on that view rather than on transposed copies,
// except the full SVD of a tall matrix (full_svd says why).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <string>

#include "linalg/blas_support.hpp"
#include "loraq/error.hpp"
#include "loraq/linalg.hpp"

// LAPACK's Fortran entry points (in libopenblas). gfortran passes the length of each CHARACTER
// argument as a hidden trailing size_t.
extern "C" {
void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s, float* u, const int* ldu,
             float* vt, const int* ldvt, float* work, const int* lwork, int* iwork, int* info, std::size_t jobz_length);
void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work, const int* lwork,
             int* info);
void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau, float* work,
             const int* lwork, int* info);
}

namespace loraq::linalg {
namespace {

// Randomized wins when the sketch is narrow: its cost grows with rank + oversampling, gesdd's does
// not. Measured on PixArt-Sigma's shapes (one thread, defaults p = 10, q = 2): 16x faster at rank 32
// of 1152 x 4608, 5x at rank 128, 2.6x at rank 256 (sketch 266, about a quarter of 1152), 1.1x
// at rank 512. Accuracy sets the limit instead: on DiT-like spectra the truncation error stays within
// about 1% of the Eckart-Young optimum, but the singular values near the rank are resolved only to
// several percent (bench/bench_svd.cpp), and that worsens as the sketch takes
// in more of a flat spectrum. A quarter of the short side keeps both modest.
constexpr double kRandomizedMaxSketchFraction = 0.25;

// A LAPACK workspace query answers in a float, which can round the size down (LAPACK 3.10's
// sroundup_lwork exists for this reason): take a little more.
int workspace_size(float query) { return int(std::ceil(double(query) * (1 + 1e-6))) + 1; }

void check_info(const char* routine, int info) {
  if (info < 0) throw Error(std::string("truncated_svd: ") + routine + " rejected argument " + std::to_string(-info));
  if (info > 0)
    throw Error(std::string("truncated_svd: ") + routine + " did not converge (info " + std::to_string(info) + ")");
}

// Column-major SVD of m x n `a` (destroyed), jobz = 'S': u [m, p], s [p], vt [p, n], p = min(m, n).
struct ColumnSvd {
  std::vector<float> u, s, vt;
};
ColumnSvd gesdd(std::vector<float>& a, int m, int n) {
  const int p = std::min(m, n);
  ColumnSvd r;
  r.u.resize(std::size_t(m) * std::size_t(p));
  r.s.resize(std::size_t(p));
  r.vt.resize(std::size_t(p) * std::size_t(n));
  std::vector<int> iwork(8 * std::size_t(p));
  const char jobz = 'S';
  int info = 0, lwork = -1;
  float query = 0;
  sgesdd_(&jobz, &m, &n, a.data(), &m, r.s.data(), r.u.data(), &m, r.vt.data(), &p, &query, &lwork, iwork.data(), &info,
          1);
  check_info("sgesdd", info);
  lwork = workspace_size(query);
  std::vector<float> work(static_cast<std::size_t>(lwork));
  sgesdd_(&jobz, &m, &n, a.data(), &m, r.s.data(), r.u.data(), &m, r.vt.data(), &p, work.data(), &lwork, iwork.data(),
          &info, 1);
  check_info("sgesdd", info);
  return r;
}

// Replaces the column-major m x n `a` (m >= n) by an orthonormal basis of its columns (Householder
// QR: sgeqrf then sorgqr), the re-orthonormalization step of the range finder.
void orthonormalize(std::vector<float>& a, int m, int n) {
  std::vector<float> tau(static_cast<std::size_t>(n));
  int info = 0, lwork = -1;
  float query_qr = 0, query_q = 0;
  sgeqrf_(&m, &n, a.data(), &m, tau.data(), &query_qr, &lwork, &info);
  check_info("sgeqrf", info);
  sorgqr_(&m, &n, &n, a.data(), &m, tau.data(), &query_q, &lwork, &info);
  check_info("sorgqr", info);
  lwork = std::max(workspace_size(query_qr), workspace_size(query_q));
  std::vector<float> work(static_cast<std::size_t>(lwork));
  sgeqrf_(&m, &n, a.data(), &m, tau.data(), work.data(), &lwork, &info);
  check_info("sgeqrf", info);
  sorgqr_(&m, &n, &n, a.data(), &m, tau.data(), work.data(), &lwork, &info);
  check_info("sorgqr", info);
}

// C = op(A) op(B) for column-major operands: the same memory read as row-major is the transpose,
// and C^T = op(B)^T op(A)^T, so the row-major gemm takes the operands swapped.
void gemm_column_major(bool transpose_a, bool transpose_b, int m, int n, int k, const float* a, int lda, const float* b,
                       int ldb, float* c, int ldc) {
  gemm(transpose_b, transpose_a, n, m, k, 1.0f, b, ldb, a, lda, 0.0f, c, ldc);
}

// SplitMix64 (Steele, Lea & Flood 2014) of a counter: a stateless generator, so entry i of the
// sketch is the same number whatever thread computes it and in whatever order.
std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// count standard normal floats, two per counter value (Box-Muller, both outputs), from `seed`.
std::vector<float> gaussian_sketch(std::size_t count, std::uint64_t seed) {
  std::vector<float> g(count);
  const std::uint64_t key = splitmix64(seed ^ 0x6c6f72617173766dULL);  // "loraqsvm": a stream of its own
  const std::int64_t pairs = std::int64_t((count + 1) / 2);
  const int threads = blas_threads();
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && pairs >= (1 << 14))
  for (std::int64_t i = 0; i < pairs; ++i) {
    const std::uint64_t bits = splitmix64(key + std::uint64_t(i));
    // Two 32-bit uniforms; u1 in (0, 1] keeps the logarithm finite.
    const double u1 = (double(bits >> 32) + 1.0) * 0x1p-32, u2 = double(bits & 0xffffffffULL) * 0x1p-32;
    const double radius = std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * std::numbers::pi * u2;
    g[std::size_t(2 * i)] = float(radius * std::cos(angle));
    if (std::size_t(2 * i + 1) < count) g[std::size_t(2 * i + 1)] = float(radius * std::sin(angle));
  }
  return g;
}

Svd full_svd(std::span<const float> a, int rows, int cols, int rank) {
  const int p = std::min(rows, cols);
  Svd out{rows, cols, rank, {}, {}, {}};
  out.u.resize(std::size_t(rows) * std::size_t(rank));
  out.vt.resize(std::size_t(rank) * std::size_t(cols));
  if (cols >= rows) {
    // The column-major view A^T [cols, rows] is tall, the shape gesdd handles fastest (a QR first).
    // A^T = U' S V'^T, so A = V' S U'^T: U of A = V' (the rows of vt), V of A = U' (columns of u).
    std::vector<float> work_copy(a.begin(), a.end());
    const ColumnSvd r = gesdd(work_copy, cols, rows);
    // Row-major U [rows, rank] is column-major [rank, rows]: the first `rank` rows of vt [p, rows].
    for (int i = 0; i < rows; ++i)
      std::memcpy(out.u.data() + std::size_t(i) * std::size_t(rank), r.vt.data() + std::size_t(i) * std::size_t(p),
                  std::size_t(rank) * sizeof(float));
    // Row-major Vt [rank, cols] is column-major [cols, rank]: the first `rank` columns of u [cols, p].
    std::copy_n(r.u.begin(), std::ptrdiff_t(cols) * rank, out.vt.begin());
    out.s.assign(r.s.begin(), r.s.begin() + rank);
    return out;
  }
  // Tall A: gesdd of the wide view A^T takes its LQ path, 1.7 times slower on 4608 x 1152 than a
  // transposed copy (bench_svd), so A itself is copied to column-major and decomposed directly.
  std::vector<float> column_major(a.size());
  constexpr int kTile = 32;  // cache-sized tiles of the transpose
  for (int i0 = 0; i0 < rows; i0 += kTile)
    for (int j0 = 0; j0 < cols; j0 += kTile)
      for (int i = i0; i < std::min(rows, i0 + kTile); ++i)
        for (int j = j0; j < std::min(cols, j0 + kTile); ++j)
          column_major[std::size_t(j) * std::size_t(rows) + std::size_t(i)] =
              a[std::size_t(i) * std::size_t(cols) + std::size_t(j)];
  const ColumnSvd r = gesdd(column_major, rows, cols);  // u [rows, p], vt [p, cols], column-major
  for (int i = 0; i < rows; ++i)
    for (int l = 0; l < rank; ++l)
      out.u[std::size_t(i) * std::size_t(rank) + std::size_t(l)] =
          r.u[std::size_t(l) * std::size_t(rows) + std::size_t(i)];
  for (int l = 0; l < rank; ++l)
    for (int j = 0; j < cols; ++j)
      out.vt[std::size_t(l) * std::size_t(cols) + std::size_t(j)] =
          r.vt[std::size_t(j) * std::size_t(p) + std::size_t(l)];
  out.s.assign(r.s.begin(), r.s.begin() + rank);
  return out;
}

Svd randomized_svd(std::span<const float> a, int rows, int cols, int rank, int sketch, const SvdOptions& options) {
  // Column-major names: At = A^T [cols, rows] (lda cols) is the matrix's own memory.
  const float* at = a.data();
  const std::vector<float> omega = gaussian_sketch(std::size_t(cols) * std::size_t(sketch), options.seed);
  std::vector<float> q(std::size_t(rows) * std::size_t(sketch));  // [rows, sketch], range of A
  std::vector<float> z(std::size_t(cols) * std::size_t(sketch));  // [cols, sketch], range of A^T
  // Y = A Omega = At^T Omega.
  gemm_column_major(true, false, rows, sketch, cols, at, cols, omega.data(), cols, q.data(), rows);
  orthonormalize(q, rows, sketch);
  // Subspace iteration (Algorithm 4.4): each product is re-orthonormalized, or the columns would all
  // collapse onto the top singular vector in float precision.
  for (int it = 0; it < options.power_iterations; ++it) {
    gemm_column_major(false, false, cols, sketch, rows, at, cols, q.data(), rows, z.data(), cols);
    orthonormalize(z, cols, sketch);
    gemm_column_major(true, false, rows, sketch, cols, at, cols, z.data(), cols, q.data(), rows);
    orthonormalize(q, rows, sketch);
  }
  // B = Q^T A [sketch, cols]; its transpose B^T = At Q [cols, sketch] is what gesdd gets (tall, so
  // gesdd starts with a QR). B^T = Ub S Vb^T gives A ~ Q B = (Q Vb) S Ub^T.
  gemm_column_major(false, false, cols, sketch, rows, at, cols, q.data(), rows, z.data(), cols);
  const ColumnSvd b = gesdd(z, cols, sketch);
  Svd out{rows, cols, rank, {}, {}, {}};
  out.s.assign(b.s.begin(), b.s.begin() + rank);
  // Row-major U [rows, rank] is column-major U^T [rank, rows] = Vb^T[:rank] Q^T.
  out.u.resize(std::size_t(rows) * std::size_t(rank));
  gemm_column_major(false, true, rank, rows, sketch, b.vt.data(), sketch, q.data(), rows, out.u.data(), rank);
  // Row-major Vt [rank, cols] is column-major [cols, rank]: the first `rank` columns of Ub.
  out.vt.assign(b.u.begin(), b.u.begin() + std::ptrdiff_t(cols) * rank);
  return out;
}

}  // namespace

Svd truncated_svd(std::span<const float> a, std::int64_t rows, std::int64_t cols, std::int64_t rank,
                  const SvdOptions& options) {
  if (rows < 1 || cols < 1)
    throw Error("truncated_svd: empty matrix " + std::to_string(rows) + " x " + std::to_string(cols));
  if (a.size() != std::size_t(rows) * std::size_t(cols))
    throw Error("truncated_svd: " + std::to_string(a.size()) + " values for a " + std::to_string(rows) + " x " +
                std::to_string(cols) + " matrix");
  const std::int64_t short_side = std::min(rows, cols);
  if (rank < 1 || rank > short_side)
    throw Error("truncated_svd: rank " + std::to_string(rank) + " of a " + std::to_string(rows) + " x " +
                std::to_string(cols) + " matrix, expected 1 to " + std::to_string(short_side));
  if (options.oversampling < 0 || options.power_iterations < 0)
    throw Error("truncated_svd: oversampling and power_iterations must be non-negative");
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!std::isfinite(a[i]))
      throw Error("truncated_svd: non-finite value " + std::to_string(a[i]) + " at row " +
                  std::to_string(std::int64_t(i) / cols) + ", column " + std::to_string(std::int64_t(i) % cols));
  const int m = blas_int(rows, "rows"), n = blas_int(cols, "cols"), r = int(rank);
  hold_openblas_serial();
  blas_int(rows * cols, "rows x cols");  // LAPACK indexes the whole matrix with one int

  const std::int64_t sketch = std::min<std::int64_t>(rank + options.oversampling, short_side);
  bool randomized = false;
  switch (options.algorithm) {
    case SvdAlgorithm::automatic:
      randomized = double(sketch) <= kRandomizedMaxSketchFraction * double(short_side);
      break;
    case SvdAlgorithm::full:
      break;
    case SvdAlgorithm::randomized:
      randomized = true;
      break;
  }
  return randomized ? randomized_svd(a, m, n, r, int(sketch), options) : full_svd(a, m, n, r);
}

}  // namespace loraq::linalg
