// Truncated SVD: LAPACK sgesdd of the whole matrix; Halko, Martinsson & Tropp's randomized range
// finder ("Finding structure with randomness", 2011, Algorithms 4.4 and 5.1); or Musco & Musco's
// block Krylov method (2015). Both randomized ones end with a Rayleigh-Ritz step on the small
// projected matrix (rayleigh_ritz).
//
// LAPACK is column-major. A row-major [rows, cols] matrix is, in the same memory, the column-major
// matrix A^T [cols, rows]; the calls below work on that view rather than on transposed copies,
// except the full SVD of a tall matrix (full_svd says why).
//
// Where the randomized time goes (1152 x 4608, rank 128, sketch 138, 2 power iterations, one
// thread): the six products with A are about 105 ms, at SGEMM's peak, and bound what any variant can
// save. Householder QR (sgeqrf + sorgqr) of each 4608 x 138 block and gesdd of the projected
// 4608 x 138 matrix took another 55 ms; Cholesky QR (GEMM and TRSM flops) on the long side, the
// bases kept on the short side, and the eigenvectors of the 138 x 138 Gram matrix instead of gesdd
// take about 10 ms. Block Krylov spends the same products on a larger space: see block_krylov_svd.
#include <cblas.h>

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
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info, std::size_t uplo_length);
void spocon_(const char* uplo, const int* n, const float* a, const int* lda, const float* anorm, float* rcond,
             float* work, int* iwork, int* info, std::size_t uplo_length);
void ssyevr_(const char* jobz, const char* range, const char* uplo, const int* n, float* a, const int* lda,
             const float* vl, const float* vu, const int* il, const int* iu, const float* abstol, int* m, float* w,
             float* z, const int* ldz, int* isuppz, float* work, const int* lwork, int* iwork, const int* liwork,
             int* info, std::size_t jobz_length, std::size_t range_length, std::size_t uplo_length);
}

namespace loraq::linalg {
namespace {

// Randomized wins when the sketch is narrow: its cost grows with rank + oversampling, gesdd's does
// not. Measured on PixArt-Sigma's shapes (one thread, defaults p = 10, q = 2) with Householder QR
// and gesdd of the projected matrix: 15x faster at rank 32 of 1152 x 4608, 5x at rank 128, 2.6x at
// rank 256 (sketch 266, about a quarter of 1152), 1.1x at rank 512; Cholesky QR and the Gram-matrix
// Ritz step since took rank 128 to 7x. Accuracy sets the limit instead: on DiT-like spectra the
// truncation error stays within about 1% of the Eckart-Young optimum, but the singular values near
// the rank are resolved only to several percent (bench/bench_svd.cpp), and that worsens as the
// sketch takes in more of a flat spectrum. A quarter of the short side keeps both modest.
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

// C = alpha op(A) op(B) + beta C for column-major operands: the same memory read as row-major is
// the transpose, and C^T = op(B)^T op(A)^T, so the row-major gemm takes the operands swapped.
void gemm_column_major(bool transpose_a, bool transpose_b, int m, int n, int k, const float* a, int lda, const float* b,
                       int ldb, float* c, int ldc, float alpha = 1.0f, float beta = 0.0f) {
  gemm(transpose_b, transpose_a, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

// Householder QR (sgeqrf then sorgqr): replaces the column-major m x n `a` (m >= n) by an
// orthonormal basis of its columns, whatever their conditioning (a rank-deficient `a` gets
// orthonormal columns all the same, some of them arbitrary).
void householder_orthonormalize(float* a, int m, int n) {
  std::vector<float> tau(static_cast<std::size_t>(n));
  int info = 0, lwork = -1;
  float query_qr = 0, query_q = 0;
  sgeqrf_(&m, &n, a, &m, tau.data(), &query_qr, &lwork, &info);
  check_info("sgeqrf", info);
  sorgqr_(&m, &n, &n, a, &m, tau.data(), &query_q, &lwork, &info);
  check_info("sorgqr", info);
  lwork = std::max(workspace_size(query_qr), workspace_size(query_q));
  std::vector<float> work(static_cast<std::size_t>(lwork));
  sgeqrf_(&m, &n, a, &m, tau.data(), work.data(), &lwork, &info);
  check_info("sgeqrf", info);
  sorgqr_(&m, &n, &n, a, &m, tau.data(), work.data(), &lwork, &info);
  check_info("sorgqr", info);
}

// Cholesky QR (Fukaya et al. 2014): G = Y^T Y = R^T R, Y <- Y R^-1, `passes` times (two give
// orthonormality to rounding; one gives a well-conditioned basis, all a power iteration needs). Its
// flops are GEMM and TRSM, 4 to 6 times faster than Householder's on 4608 x 138. Returns false,
// with `y` partly updated, when a Gram matrix is too ill-conditioned for float (reciprocal
// condition estimate below kCholeskyMinRcond, so cond(Y) above about 1000): the caller then falls
// back to Householder on the original columns.
constexpr float kCholeskyMinRcond = 1e-6f;
bool cholesky_orthonormalize(float* y, int m, int n, int passes) {
  std::vector<float> g(std::size_t(n) * std::size_t(n)), work(3 * std::size_t(n));
  std::vector<int> iwork(static_cast<std::size_t>(n));
  const char upper = 'U';
  for (int pass = 0; pass < passes; ++pass) {
    gemm_column_major(true, false, n, n, m, y, m, y, m, g.data(), n);
    float anorm = 0;  // 1-norm of the symmetric G
    for (int j = 0; j < n; ++j) {
      float column = 0;
      for (int i = 0; i < n; ++i) column += std::abs(g[std::size_t(j) * std::size_t(n) + std::size_t(i)]);
      anorm = std::max(anorm, column);
    }
    int info = 0;
    spotrf_(&upper, &n, g.data(), &n, &info, 1);
    if (info != 0 || !(anorm > 0)) return false;
    float rcond = 0;
    spocon_(&upper, &n, g.data(), &n, &anorm, &rcond, work.data(), iwork.data(), &info, 1);
    check_info("spocon", info);
    if (!(rcond >= kCholeskyMinRcond)) return false;
    // Y <- Y R^-1 by row panels, fixed by the shape: each row's result is one serial TRSM's
    // whatever the thread count.
    constexpr int kPanel = 256;
    const int panels = (m + kPanel - 1) / kPanel;
    const int threads = std::min(blas_threads(), panels);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && double(m) * n * n >= 1 << 22)
    for (int p = 0; p < panels; ++p) {
      const int begin = p * kPanel, size = std::min(kPanel, m - begin);
      cblas_strsm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, size, n, 1.0f, g.data(), n,
                  y + begin, m);
    }
  }
  return true;
}

// Orthonormalizes the column-major m x n `y` (m >= n): Cholesky QR (`passes` of it), or Householder
// when that meets an ill-conditioned Gram matrix.
void orthonormalize(float* y, int m, int n, int passes) {
  std::vector<float> copy(y, y + std::size_t(m) * std::size_t(n));
  if (cholesky_orthonormalize(y, m, n, passes)) return;
  std::copy(copy.begin(), copy.end(), y);
  householder_orthonormalize(y, m, n);
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

// The randomized methods work on the short side: M = A when rows <= cols, else M = A^T, so M is
// short x long with short <= long, its range is the smaller space, and the bases they build there
// (Q, short x d) are cheap to orthonormalize. M's products with a block of columns:
struct ShortSide {
  const float* at;  // A^T [cols, rows] column-major: the matrix's own memory
  int rows, cols;
  bool wide;  // rows <= cols: M = A
  int short_side() const { return wide ? rows : cols; }
  int long_side() const { return wide ? cols : rows; }
  // Y [short, width] = M X, X [long, width].
  void m_times(const float* x, int width, float* y) const {
    if (wide)
      gemm_column_major(true, false, rows, width, cols, at, cols, x, cols, y, rows);
    else
      gemm_column_major(false, false, cols, width, rows, at, cols, x, rows, y, cols);
  }
  // Z [long, width] = M^T Q, Q [short, width].
  void mt_times(const float* q, int width, float* z) const {
    if (wide)
      gemm_column_major(false, false, cols, width, rows, at, cols, q, rows, z, cols);
    else
      gemm_column_major(true, false, rows, width, cols, at, cols, q, cols, z, rows);
  }
};

// Below this ratio of the rank-th to the largest Ritz value, the Gram route of rayleigh_ritz would
// lose the orthonormality of V (its error grows like eps (s_1 / s_rank)^2), so the SVD of Z itself
// is taken instead.
constexpr float kGramMinRatio = 0.1f;

// Rayleigh-Ritz: Q [short, d] orthonormal, Z = M^T Q [long, d] (both column-major), so
// M ~ Q Q^T M = Q Z^T. The SVD of Z^T comes from the eigenvectors W of the d x d Gram matrix
// T = Z^T Z = Q^T M M^T Q (its top `rank` pairs, LAPACK's MRRR ssyevr): s = sqrt(eig), U = Q W and
// V = Z W / s. That is much cheaper than an SVD of the long Z (gesdd: a Householder QR of it first)
// and as accurate for values well above rounding; when s_rank / s_1 < kGramMinRatio, gesdd of Z.
Svd rayleigh_ritz(const ShortSide& mat, const float* q, const float* z, int d, int rank) {
  const int ns = mat.short_side(), nl = mat.long_side();
  std::vector<float> us(std::size_t(ns) * std::size_t(rank)), vl(std::size_t(nl) * std::size_t(rank));
  std::vector<float> s(static_cast<std::size_t>(rank));
  // Lower triangle of T, by block columns of kBlock (fixed by d: same operations on any thread count).
  constexpr int kBlock = 64;
  std::vector<float> t(std::size_t(d) * std::size_t(d));
  for (int j = 0; j < d; j += kBlock) {
    const int width = std::min(kBlock, d - j);
    gemm_column_major(true, false, d - j, width, nl, z + std::size_t(j) * std::size_t(nl), nl,
                      z + std::size_t(j) * std::size_t(nl), nl, t.data() + std::size_t(j) * std::size_t(d) + j, d);
  }
  const char jobz = 'V', range = 'I', lower = 'L';
  const int il = d - rank + 1, iu = d;
  const float unused = 0, abstol = 0;
  int found = 0, info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  float work_query = 0;
  std::vector<float> eig(static_cast<std::size_t>(d)), w(std::size_t(d) * std::size_t(rank));
  std::vector<int> isuppz(2 * std::size_t(rank));
  ssyevr_(&jobz, &range, &lower, &d, t.data(), &d, &unused, &unused, &il, &iu, &abstol, &found, eig.data(), w.data(),
          &d, isuppz.data(), &work_query, &lwork, &iwork_query, &liwork, &info, 1, 1, 1);
  check_info("ssyevr", info);
  lwork = workspace_size(work_query);
  liwork = iwork_query;
  std::vector<float> work(static_cast<std::size_t>(lwork));
  std::vector<int> iwork(static_cast<std::size_t>(liwork));
  ssyevr_(&jobz, &range, &lower, &d, t.data(), &d, &unused, &unused, &il, &iu, &abstol, &found, eig.data(), w.data(),
          &d, isuppz.data(), work.data(), &lwork, iwork.data(), &liwork, &info, 1, 1, 1);
  check_info("ssyevr", info);
  if (found != rank)
    throw Error("truncated_svd: ssyevr found " + std::to_string(found) + " of " + std::to_string(rank));
  // Ascending: reverse into descending values and vectors.
  std::vector<float> wd(w.size());
  for (int l = 0; l < rank; ++l) {
    s[std::size_t(l)] = std::sqrt(std::max(eig[std::size_t(rank - 1 - l)], 0.0f));
    std::copy_n(w.data() + std::size_t(rank - 1 - l) * std::size_t(d), d, wd.data() + std::size_t(l) * std::size_t(d));
  }
  if (s[std::size_t(rank - 1)] >= kGramMinRatio * s[0] && s[0] > 0) {
    gemm_column_major(false, false, ns, rank, d, q, ns, wd.data(), d, us.data(), ns);
    gemm_column_major(false, false, nl, rank, d, z, nl, wd.data(), d, vl.data(), nl);
    for (int l = 0; l < rank; ++l) {
      const float inverse = 1.0f / s[std::size_t(l)];
      float* column = vl.data() + std::size_t(l) * std::size_t(nl);
      for (int i = 0; i < nl; ++i) column[i] *= inverse;
    }
  } else {
    // Z = Uz S Vz^T (gesdd, tall), so Z^T = Vz S Uz^T and M ~ (Q Vz) S Uz^T.
    std::vector<float> copy(z, z + std::size_t(nl) * std::size_t(d));
    const ColumnSvd b = gesdd(copy, nl, d);
    s.assign(b.s.begin(), b.s.begin() + rank);
    gemm_column_major(false, true, ns, rank, d, q, ns, b.vt.data(), d, us.data(), ns);
    std::copy_n(b.u.begin(), std::size_t(nl) * std::size_t(rank), vl.begin());
  }
  // M = A: U = Us, V = Vl; M = A^T: U = Vl, V = Us. Row-major Vt [rank, cols] is column-major
  // V [cols, rank]; row-major U [rows, rank] is the transpose of column-major U [rows, rank].
  const std::vector<float>& u_cm = mat.wide ? us : vl;
  const std::vector<float>& v_cm = mat.wide ? vl : us;
  Svd out{mat.rows, mat.cols, rank, std::vector<float>(std::size_t(mat.rows) * std::size_t(rank)), std::move(s), v_cm};
  for (int l = 0; l < rank; ++l)
    for (int i = 0; i < mat.rows; ++i)
      out.u[std::size_t(i) * std::size_t(rank) + std::size_t(l)] =
          u_cm[std::size_t(l) * std::size_t(mat.rows) + std::size_t(i)];
  return out;
}

// Halko, Martinsson & Tropp's Algorithm 4.4 (subspace iteration) with a sketch of `sketch` columns.
Svd randomized_svd(const ShortSide& mat, int rank, int sketch, const SvdOptions& options) {
  const int ns = mat.short_side(), nl = mat.long_side();
  const std::vector<float> omega = gaussian_sketch(std::size_t(nl) * std::size_t(sketch), options.seed);
  std::vector<float> q(std::size_t(ns) * std::size_t(sketch)), z(std::size_t(nl) * std::size_t(sketch));
  mat.m_times(omega.data(), sketch, q.data());
  orthonormalize(q.data(), ns, sketch, 2);
  for (int it = 0; it < options.power_iterations; ++it) {
    // Each product is re-conditioned, or the columns would all collapse onto the top singular vector
    // in float. On the long side one Cholesky QR pass suffices (a well-conditioned basis, not an
    // orthonormal one, is all the next product needs); Q, on the short side, is made orthonormal.
    mat.mt_times(q.data(), sketch, z.data());
    orthonormalize(z.data(), nl, sketch, 1);
    mat.m_times(z.data(), sketch, q.data());
    orthonormalize(q.data(), ns, sketch, 2);
  }
  mat.mt_times(q.data(), sketch, z.data());
  return rayleigh_ritz(mat, q.data(), z.data(), sketch, rank);
}

// Block Krylov (Musco & Musco, "Randomized Block Krylov Methods for Stronger and Faster Approximate
// Singular Value Decomposition", 2015): the Rayleigh-Ritz step on the whole Krylov space
// K = [M Omega, (M M^T) M Omega, ..., (M M^T)^q M Omega] rather than on its last block only, built
// as block Lanczos with full reorthogonalization (each new block projected twice against all the
// previous ones, "twice is enough"). Z = M^T Q is a by-product: block i's M^T Q_i is the product the
// next block starts from, so the space costs 2 (q + 1) products with a `block`-wide sketch.
constexpr int kReorthRounds = 3;
constexpr float kReorthTolerance = 1e-5f;  // max |Q^T Q_new|; CholQR2 alone reaches about 1e-6
Svd block_krylov_svd(const ShortSide& mat, int rank, int block, int blocks, const SvdOptions& options) {
  const int ns = mat.short_side(), nl = mat.long_side();
  const int d = std::min(ns, block * blocks);
  const std::vector<float> omega = gaussian_sketch(std::size_t(nl) * std::size_t(block), options.seed);
  std::vector<float> q(std::size_t(ns) * std::size_t(d)), z(std::size_t(nl) * std::size_t(d));
  std::vector<float> c(std::size_t(d) * std::size_t(block));
  mat.m_times(omega.data(), std::min(block, d), q.data());
  orthonormalize(q.data(), ns, std::min(block, d), 2);
  for (int begin = 0; begin < d; begin += block) {
    const int width = std::min(block, d - begin);
    float* qi = q.data() + std::size_t(begin) * std::size_t(ns);
    mat.mt_times(qi, width, z.data() + std::size_t(begin) * std::size_t(nl));
    const int next = begin + width, next_width = std::min(block, d - next);
    if (next_width == 0) break;
    float* w = q.data() + std::size_t(next) * std::size_t(ns);
    // W = M (M^T Q_i): its first next_width columns when the space is cut at the short side.
    mat.m_times(z.data() + std::size_t(begin) * std::size_t(nl), next_width, w);
    // W -= Q (Q^T W) twice, then orthonormalize. When most of W lay in the span of Q (the space is
    // running out: a low-rank matrix, or converged directions), the rounding left over is large next
    // to what remains and the normalized block is not orthogonal to Q to working precision (2e-2
    // measured on a rank-20 matrix); nor is Householder's arbitrary replacement for a cancelled
    // column. So Q^T Q_new is checked and the round repeated from the normalized block, which a
    // projection then cleans (at most kReorthRounds; normally one).
    for (int round = 0; round < kReorthRounds; ++round) {
      for (int pass = 0; pass < 2; ++pass) {
        gemm_column_major(true, false, next, next_width, ns, q.data(), ns, w, ns, c.data(), next);
        gemm_column_major(false, false, ns, next_width, next, q.data(), ns, c.data(), next, w, ns, -1.0f, 1.0f);
      }
      orthonormalize(w, ns, next_width, 2);
      gemm_column_major(true, false, next, next_width, ns, q.data(), ns, w, ns, c.data(), next);
      float worst = 0;
      for (std::size_t i = 0; i < std::size_t(next) * std::size_t(next_width); ++i)
        worst = std::max(worst, std::abs(c[i]));
      if (worst <= kReorthTolerance) break;
    }
  }
  return rayleigh_ritz(mat, q.data(), z.data(), d, rank);
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
  if (options.oversampling < 0 || options.power_iterations < 0 || options.block_size < 0)
    throw Error("truncated_svd: oversampling, power_iterations and block_size must be non-negative");
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!std::isfinite(a[i]))
      throw Error("truncated_svd: non-finite value " + std::to_string(a[i]) + " at row " +
                  std::to_string(std::int64_t(i) / cols) + ", column " + std::to_string(std::int64_t(i) % cols));
  const int m = blas_int(rows, "rows"), n = blas_int(cols, "cols"), r = int(rank);
  hold_openblas_serial();
  blas_int(rows * cols, "rows x cols");  // LAPACK indexes the whole matrix with one int

  const std::int64_t sketch = std::min<std::int64_t>(rank + options.oversampling, short_side);
  SvdAlgorithm algorithm = options.algorithm;
  if (algorithm == SvdAlgorithm::automatic)
    algorithm = double(sketch) <= kRandomizedMaxSketchFraction * double(short_side) ? SvdAlgorithm::randomized
                                                                                    : SvdAlgorithm::full;
  const ShortSide mat{a.data(), m, n, m <= n};
  switch (algorithm) {
    case SvdAlgorithm::automatic:
    case SvdAlgorithm::full:
      break;
    case SvdAlgorithm::randomized:
      return randomized_svd(mat, r, int(sketch), options);
    case SvdAlgorithm::block_krylov: {
      const std::int64_t block =
          std::min(options.block_size > 0 ? std::int64_t(options.block_size) : (sketch + 2) / 3, short_side);
      const std::int64_t blocks = std::max<std::int64_t>(options.power_iterations + 1, (sketch + block - 1) / block);
      return block_krylov_svd(mat, r, int(block), int(std::min<std::int64_t>(blocks, short_side)), options);
    }
  }
  return full_svd(a, m, n, r);
}

}  // namespace loraq::linalg
