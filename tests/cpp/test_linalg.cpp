// src/linalg: GEMM against a naive double loop (exact on integer inputs), truncated SVD against
// matrices built with a known spectrum (U0 diag(s0) V0^T from our own Gram-Schmidt, no LAPACK), the
// Eckart-Young optimum, randomized against full, bad input, and bit-for-bit determinism across
// BLAS and OpenMP thread counts and concurrent callers.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "loraq/error.hpp"
#include "loraq/linalg.hpp"

namespace loraq::linalg {
namespace {

constexpr std::uint64_t kSeed = 20240611;

// Restores the BLAS and OpenMP thread counts a test changes.
struct ThreadCounts {
  int blas = blas_threads(), omp = omp_get_max_threads();
  ~ThreadCounts() {
    set_blas_threads(blas);
    omp_set_num_threads(omp);
  }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(b[i])) return false;
  return true;
}
bool same_bits(const Svd& a, const Svd& b) {
  return same_bits(a.u, b.u) && same_bits(a.s, b.s) && same_bits(a.vt, b.vt);
}

// ---- GEMM ----------------------------------------------------------------------------------------

// A row-major matrix stored with `ld` >= cols; the padding holds a sentinel that must survive.
struct Stored {
  std::int64_t rows, cols, ld;
  std::vector<float> v;
  float at(std::int64_t r, std::int64_t c) const { return v[std::size_t(r * ld + c)]; }
};
constexpr float kPad = -777.0f;

Stored random_stored(std::int64_t rows, std::int64_t cols, std::int64_t pad, std::mt19937_64& rng, bool integers) {
  Stored s{rows, cols, cols + pad, std::vector<float>(std::size_t(rows * (cols + pad)), kPad)};
  std::uniform_int_distribution<int> small(-8, 8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) s.v[std::size_t(r * s.ld + c)] = integers ? float(small(rng)) : normal(rng);
  return s;
}

void check_gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t pad, bool integers) {
  SCOPED_TRACE("ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " m=" + std::to_string(m) +
               " n=" + std::to_string(n) + " k=" + std::to_string(k) + " pad=" + std::to_string(pad) +
               " seed=" + std::to_string(kSeed));
  std::mt19937_64 rng(kSeed + std::uint64_t(m * 7 + n * 13 + k * 31 + ta * 2 + tb));
  const Stored a = ta ? random_stored(k, m, pad, rng, integers) : random_stored(m, k, pad, rng, integers);
  const Stored b = tb ? random_stored(n, k, pad, rng, integers) : random_stored(k, n, pad, rng, integers);
  Stored c = random_stored(m, n, pad, rng, integers);
  const float alpha = integers ? 2.0f : 0.75f, beta = integers ? -1.0f : 0.5f;
  std::vector<double> ref(static_cast<std::size_t>(m * n)), magnitude(std::size_t(m * n));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = 0, abs_sum = 0;
      for (std::int64_t l = 0; l < k; ++l) {
        const double x = ta ? a.at(l, i) : a.at(i, l), y = tb ? b.at(j, l) : b.at(l, j);
        sum += x * y;
        abs_sum += std::abs(x * y);
      }
      ref[std::size_t(i * n + j)] = double(alpha) * sum + double(beta) * double(c.at(i, j));
      magnitude[std::size_t(i * n + j)] =
          std::abs(double(alpha)) * abs_sum + std::abs(double(beta) * double(c.at(i, j)));
    }
  gemm(ta, tb, m, n, k, alpha, a.v.data(), a.ld, b.v.data(), b.ld, beta, c.v.data(), c.ld);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      const double got = c.at(i, j), want = ref[std::size_t(i * n + j)];
      if (integers) {
        ASSERT_EQ(got, want) << "at " << i << "," << j;  // every partial sum is an exact small integer
      } else {
        // Standard float dot-product bound: (k + 2) u sum|alpha x y| + |beta c|, u = 2^-24.
        const double bound = double(k + 2) * 0x1p-24 * magnitude[std::size_t(i * n + j)] + 1e-30;
        ASSERT_LE(std::abs(got - want), bound) << "at " << i << "," << j;
      }
    }
    for (std::int64_t j = n; j < c.ld; ++j) ASSERT_EQ(c.at(i, j), kPad) << "padding of C written at row " << i;
  }
}

TEST(Gemm, AllTransposesAndStridesMatchANaiveLoop) {
  for (bool integers : {true, false})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        check_gemm(ta, tb, 37, 29, 53, 0, integers);
        check_gemm(ta, tb, 37, 29, 53, 5, integers);
        check_gemm(ta, tb, 1, 64, 17, 3, integers);
        check_gemm(ta, tb, 130, 150, 300, 7, integers);
        check_gemm(ta, tb, 600, 50, 200, 3, integers);  // split into row panels (gemm.cpp)
        check_gemm(ta, tb, 50, 600, 200, 0, integers);  // split into column panels
      }
}

TEST(Gemm, SameBitsForAnyThreadCount) {
  const ThreadCounts restore;
  std::mt19937_64 rng(kSeed);
  for (const auto& [m, n] : {std::pair<std::int64_t, std::int64_t>{900, 70}, {70, 900}}) {
    const std::int64_t k = 500;
    const Stored a = random_stored(m, k, 0, rng, false), b = random_stored(k, n, 0, rng, false);
    std::vector<float> reference(std::size_t(m * n));
    set_blas_threads(1);
    gemm(false, false, m, n, k, 1.0f, a.v.data(), k, b.v.data(), n, 0.0f, reference.data(), n);
    for (int threads : {2, 3}) {
      set_blas_threads(threads);
      std::vector<float> c(std::size_t(m * n));
      gemm(false, false, m, n, k, 1.0f, a.v.data(), k, b.v.data(), n, 0.0f, c.data(), n);
      EXPECT_TRUE(same_bits(reference, c)) << m << "x" << n << ", " << threads << " threads, seed " << kSeed;
    }
  }
}

TEST(Gemm, KZeroScalesCByBeta) {
  std::vector<float> c = {1, 2, 3, 4};
  const float dummy = 0;
  gemm(false, false, 2, 2, 0, 1.0f, &dummy, 1, &dummy, 2, 3.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{3, 6, 9, 12}));
}

// The double product on small integer matrices: exact, so equal to a naive loop, every transpose.
TEST(Gemm, DoubleMatchesANaiveLoopExactly) {
  std::mt19937_64 rng(kSeed + 3);
  std::uniform_int_distribution<int> small(-9, 9);
  const std::int64_t m = 23, n = 17, k = 31;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      std::vector<double> a(std::size_t(m * k)), b(std::size_t(k * n)), c(std::size_t(m * n), 5.0);
      for (double& v : a) v = small(rng);
      for (double& v : b) v = small(rng);
      gemm(ta, tb, m, n, k, 2.0, a.data(), ta ? m : k, b.data(), tb ? k : n, -1.0, c.data(), n);
      for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < n; ++j) {
          double want = -5.0;
          for (std::int64_t p = 0; p < k; ++p)
            want += 2.0 * a[std::size_t(ta ? p * m + i : i * k + p)] * b[std::size_t(tb ? j * k + p : p * n + j)];
          ASSERT_EQ(c[std::size_t(i * n + j)], want) << "ta " << ta << " tb " << tb << " at " << i << "," << j;
        }
    }
}

// solve() returns X with A X = B for a random well-conditioned A (row-major, several right-hand
// sides), and names a singular A.
TEST(Solve, RecoversAKnownSolutionAndRejectsSingularMatrices) {
  std::mt19937_64 rng(kSeed + 4);
  std::normal_distribution<double> normal(0.0, 1.0);
  const std::int64_t n = 40, nrhs = 7;
  std::vector<double> a(std::size_t(n * n)), x(std::size_t(n * nrhs)), b(std::size_t(n * nrhs), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) a[std::size_t(i * n + j)] = normal(rng) + (i == j ? 2.0 * double(n) : 0.0);
  for (double& v : x) v = normal(rng);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < nrhs; ++j)
      for (std::int64_t p = 0; p < n; ++p) b[std::size_t(i * nrhs + j)] += a[std::size_t(i * n + p)] * x[std::size_t(p * nrhs + j)];
  solve(a, b, n, nrhs);
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(b[i], x[i], 1e-12) << "at " << i;

  std::vector<double> singular = {1, 2, 2, 4}, rhs = {1, 1};
  EXPECT_THROW(solve(singular, rhs, 2, 1), Error);
  EXPECT_THROW(solve(singular, rhs, 3, 1), Error);  // sizes that disagree
}

TEST(Gemm, BadStridesThrow) {
  std::vector<float> a(12), b(12), c(12);
  EXPECT_THROW(gemm(false, false, 3, 4, 3, 1, a.data(), 2, b.data(), 4, 0, c.data(), 4), Error);  // lda < k
  EXPECT_THROW(gemm(true, false, 3, 4, 3, 1, a.data(), 2, b.data(), 4, 0, c.data(), 4), Error);   // lda < m
  EXPECT_THROW(gemm(false, true, 3, 4, 3, 1, a.data(), 3, b.data(), 2, 0, c.data(), 4), Error);   // ldb < k
  EXPECT_THROW(gemm(false, false, 3, 4, 3, 1, a.data(), 3, b.data(), 4, 0, c.data(), 3), Error);  // ldc < n
  EXPECT_THROW(gemm(false, false, -1, 4, 3, 1, a.data(), 3, b.data(), 4, 0, c.data(), 4), Error);
}

// ---- SVD -----------------------------------------------------------------------------------------

// `cols` orthonormal columns of length `rows` (rows >= cols), column-major in double: modified
// Gram-Schmidt, twice, of Gaussian columns.
std::vector<double> random_orthonormal(std::int64_t rows, std::int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> q(static_cast<std::size_t>(rows * cols));
  for (double& v : q) v = normal(rng);
  for (std::int64_t j = 0; j < cols; ++j) {
    double* qj = q.data() + j * rows;
    for (int pass = 0; pass < 2; ++pass)
      for (std::int64_t i = 0; i < j; ++i) {
        const double* qi = q.data() + i * rows;
        double dot = 0;
        for (std::int64_t r = 0; r < rows; ++r) dot += qi[r] * qj[r];
        for (std::int64_t r = 0; r < rows; ++r) qj[r] -= dot * qi[r];
      }
    double norm = 0;
    for (std::int64_t r = 0; r < rows; ++r) norm += qj[r] * qj[r];
    norm = std::sqrt(norm);
    for (std::int64_t r = 0; r < rows; ++r) qj[r] /= norm;
  }
  return q;
}

// A = U0 diag(s0) V0^T, row-major float, with s0 given (descending): its SVD is known exactly up to
// the float rounding of the entries.
struct KnownSvd {
  std::int64_t rows, cols;
  std::vector<double> s0;
  std::vector<float> a;
};

KnownSvd known_matrix(std::int64_t rows, std::int64_t cols, const std::vector<double>& s0, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const std::int64_t p = std::int64_t(s0.size());
  const std::vector<double> u0 = random_orthonormal(rows, p, rng), v0 = random_orthonormal(cols, p, rng);
  KnownSvd k{rows, cols, s0, std::vector<float>(std::size_t(rows * cols))};
  std::vector<double> row(static_cast<std::size_t>(cols));
  for (std::int64_t i = 0; i < rows; ++i) {
    std::fill(row.begin(), row.end(), 0.0);
    for (std::int64_t l = 0; l < p; ++l) {
      const double f = u0[std::size_t(l * rows + i)] * s0[std::size_t(l)];
      const double* v = v0.data() + l * cols;
      for (std::int64_t j = 0; j < cols; ++j) row[std::size_t(j)] += f * v[j];
    }
    for (std::int64_t j = 0; j < cols; ++j) k.a[std::size_t(i * cols + j)] = float(row[std::size_t(j)]);
  }
  return k;
}

std::vector<double> power_law(std::int64_t count, double exponent) {
  std::vector<double> s(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) s[std::size_t(i)] = std::pow(double(i + 1), -exponent);
  return s;
}

double frobenius(const std::vector<float>& a) {
  double sum = 0;
  for (float v : a) sum += double(v) * double(v);
  return std::sqrt(sum);
}

// max |X X^T - I| over the `count` rows of the row-major [count, length] x (rows orthonormal).
double row_orthonormality_error(const float* x, std::int64_t count, std::int64_t length, std::int64_t stride_row,
                                std::int64_t stride_col) {
  double worst = 0;
  for (std::int64_t i = 0; i < count; ++i)
    for (std::int64_t j = 0; j <= i; ++j) {
      double dot = 0;
      for (std::int64_t l = 0; l < length; ++l)
        dot += double(x[i * stride_row + l * stride_col]) * double(x[j * stride_row + l * stride_col]);
      worst = std::max(worst, std::abs(dot - (i == j ? 1.0 : 0.0)));
    }
  return worst;
}

// ||A - U diag(S) Vt||_F in double.
double reconstruction_error(const std::vector<float>& a, const Svd& svd) {
  double sum = 0;
  for (std::int64_t i = 0; i < svd.rows; ++i)
    for (std::int64_t j = 0; j < svd.cols; ++j) {
      double approx = 0;
      for (std::int64_t l = 0; l < svd.rank; ++l)
        approx += double(svd.u[std::size_t(i * svd.rank + l)]) * double(svd.s[std::size_t(l)]) *
                  double(svd.vt[std::size_t(l * svd.cols + j)]);
      const double d = double(a[std::size_t(i * svd.cols + j)]) - approx;
      sum += d * d;
    }
  return std::sqrt(sum);
}

double tail_norm(const std::vector<double>& s0, std::int64_t rank) {
  double sum = 0;
  for (std::size_t i = std::size_t(rank); i < s0.size(); ++i) sum += s0[i] * s0[i];
  return std::sqrt(sum);
}

void check_svd(const KnownSvd& k, std::int64_t rank, const SvdOptions& options, double value_tolerance,
               double error_tolerance) {
  const Svd svd = truncated_svd(k.a, k.rows, k.cols, rank, options);
  ASSERT_EQ(svd.rows, k.rows);
  ASSERT_EQ(svd.cols, k.cols);
  ASSERT_EQ(svd.rank, rank);
  ASSERT_EQ(svd.u.size(), std::size_t(k.rows * rank));
  ASSERT_EQ(svd.s.size(), std::size_t(rank));
  ASSERT_EQ(svd.vt.size(), std::size_t(rank * k.cols));
  // Float data: the entries carry a rounding of relative size 2^-24, a perturbation of norm about
  // 2^-24 ||A||_F, which bounds how far any singular value can move (Weyl).
  const double norm = frobenius(k.a);
  for (std::int64_t i = 0; i < rank; ++i) {
    if (i > 0) {
      EXPECT_GE(svd.s[std::size_t(i - 1)], svd.s[std::size_t(i)]) << "not descending at " << i;
    }
    EXPECT_NEAR(svd.s[std::size_t(i)], k.s0[std::size_t(i)], value_tolerance * k.s0[0] + 1e-5 * norm) << "value " << i;
  }
  EXPECT_LT(row_orthonormality_error(svd.u.data(), rank, k.rows, 1, rank), 2e-5) << "U^T U != I";
  EXPECT_LT(row_orthonormality_error(svd.vt.data(), rank, k.cols, k.cols, 1), 2e-5) << "V^T V != I";
  // Eckart-Young: no rank-r matrix gets closer than the tail of the spectrum, and the truncated SVD
  // reaches it.
  const double optimum = tail_norm(k.s0, rank), error = reconstruction_error(k.a, svd);
  EXPECT_NEAR(error, optimum, error_tolerance * optimum + 2e-5 * norm);
}

TEST(Svd, FullMatchesAKnownSpectrumOnEveryShape) {
  const SvdOptions full{SvdAlgorithm::full, 10, 2, 0};
  struct Case {
    std::int64_t rows, cols, rank;
  };
  for (const Case c : {Case{60, 40, 10}, Case{40, 60, 10}, Case{96, 96, 96}, Case{200, 130, 1}, Case{130, 200, 129}}) {
    SCOPED_TRACE(std::to_string(c.rows) + "x" + std::to_string(c.cols) + " rank " + std::to_string(c.rank) + " seed " +
                 std::to_string(kSeed));
    const KnownSvd k = known_matrix(c.rows, c.cols, power_law(std::min(c.rows, c.cols), 0.5), kSeed);
    check_svd(k, c.rank, full, 1e-6, 1e-4);
  }
}

std::vector<double> geometric(std::int64_t count, double ratio) {
  std::vector<double> s(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) s[std::size_t(i)] = std::pow(ratio, double(i));
  return s;
}

TEST(Svd, RandomizedTopValuesWithinOnePercentOfFullOnADecayingSpectrum) {
  // Default options (oversampling 10, 2 power iterations). Subspace iteration resolves value i to
  // about (s[sketch] / s[i])^(2q + 1) (Halko et al. section 10.4), so a spectrum falling by 7% a
  // step separates the 32 top values from the 42nd well.
  for (const auto& [rows, cols] : {std::pair<std::int64_t, std::int64_t>{300, 700}, {700, 300}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols) + " seed " + std::to_string(kSeed));
    const KnownSvd k = known_matrix(rows, cols, geometric(std::min(rows, cols), 0.93), kSeed + 1);
    const std::int64_t rank = 32;
    const Svd full = truncated_svd(k.a, rows, cols, rank, {SvdAlgorithm::full, 10, 2, 0});
    const Svd rnd = truncated_svd(k.a, rows, cols, rank, {SvdAlgorithm::randomized, 10, 2, 7});
    for (std::int64_t i = 0; i < rank; ++i) {
      EXPECT_LE(std::abs(rnd.s[std::size_t(i)] - full.s[std::size_t(i)]), 0.01 * full.s[std::size_t(i)]) << i;
      // Q^T A is a projection of A: its singular values cannot exceed A's (up to float rounding).
      EXPECT_LE(rnd.s[std::size_t(i)], full.s[std::size_t(i)] * (1 + 1e-5)) << i;
    }
    EXPECT_LT(row_orthonormality_error(rnd.u.data(), rank, rows, 1, rank), 2e-5);
    EXPECT_LT(row_orthonormality_error(rnd.vt.data(), rank, cols, cols, 1), 2e-5);
    const double optimum = tail_norm(k.s0, rank);
    EXPECT_LE(reconstruction_error(k.a, rnd), 1.001 * optimum);
  }
}

TEST(Svd, RandomizedIsNearTheOptimumOnASlowlyDecayingSpectrum) {
  // s_i = (i + 1)^-0.6: the 32nd and 42nd values differ by 17%, the tail values near the rank are
  // not resolved to 1% (that takes more power iterations), but the truncation error, which is what
  // the methods need, stays within 2% of the Eckart-Young optimum and the top values are accurate.
  const KnownSvd k = known_matrix(300, 700, power_law(300, 0.6), kSeed + 6);
  const Svd rnd = truncated_svd(k.a, 300, 700, 32, {SvdAlgorithm::randomized, 10, 2, 7});
  for (std::int64_t i = 0; i < 8; ++i)
    EXPECT_NEAR(rnd.s[std::size_t(i)], k.s0[std::size_t(i)], 0.01 * k.s0[std::size_t(i)]) << i;
  const double optimum = tail_norm(k.s0, 32), error = reconstruction_error(k.a, rnd);
  EXPECT_LE(error, 1.02 * optimum);
  EXPECT_GE(error, optimum * (1 - 1e-4));  // nothing beats Eckart-Young
}

TEST(Svd, RandomizedIsExactOnALowRankMatrix) {
  // Rank 20 in a 150 x 250 matrix: a sketch of 30 columns spans the whole range.
  std::vector<double> s0 = power_law(20, 1.0);
  const KnownSvd k = known_matrix(150, 250, s0, kSeed + 2);
  s0.resize(150, 0.0);
  KnownSvd padded = k;
  padded.s0 = s0;
  check_svd(padded, 20, {SvdAlgorithm::randomized, 10, 0, 3}, 1e-5, 1e-3);
  check_svd(padded, 10, {SvdAlgorithm::randomized, 10, 1, 3}, 1e-5, 1e-3);
}

// max over the top `count` values of |s - s_full| / s_full.
double max_relative_error(const Svd& svd, const Svd& full, std::int64_t count) {
  double worst = 0;
  for (std::int64_t i = 0; i < count; ++i)
    worst = std::max(worst, std::abs(double(svd.s[std::size_t(i)]) - double(full.s[std::size_t(i)])) /
                                double(full.s[std::size_t(i)]));
  return worst;
}

TEST(Svd, BlockKrylovResolvesAFlatSpectrumBetterThanSubspaceIterationForTheSameProducts) {
  // s_i = (i + 1)^-0.25: the 32nd and 64th values differ by 16%, a spectrum as flat as a DiT
  // weight's bulk. Both runs take 384 column-products with A or A^T: subspace iteration with a
  // 48-column sketch and 3 power iterations (8 products of 48), block Krylov with blocks of 32 and 5
  // iterations (12 products of 32, a 192-column space).
  const KnownSvd k = known_matrix(300, 700, power_law(300, 0.25), kSeed + 30);
  const std::int64_t rank = 32;
  const Svd full = truncated_svd(k.a, 300, 700, rank, {SvdAlgorithm::full, 0, 0, 0});
  const Svd subspace = truncated_svd(k.a, 300, 700, rank, {SvdAlgorithm::randomized, 16, 3, 7});
  const Svd krylov = truncated_svd(k.a, 300, 700, rank, {SvdAlgorithm::block_krylov, 0, 5, 7, 32});
  const double subspace_error = max_relative_error(subspace, full, rank);
  const double krylov_error = max_relative_error(krylov, full, rank);
  RecordProperty("subspace_error", std::to_string(subspace_error));
  RecordProperty("krylov_error", std::to_string(krylov_error));
  EXPECT_LE(krylov_error, 0.01);
  EXPECT_LT(krylov_error, 0.5 * subspace_error);
  for (std::int64_t i = 0; i < rank; ++i)  // Ritz values never exceed the true ones (Cauchy interlacing)
    EXPECT_LE(krylov.s[std::size_t(i)], full.s[std::size_t(i)] * (1 + 1e-5)) << i;
  EXPECT_LT(row_orthonormality_error(krylov.u.data(), rank, 300, 1, rank), 2e-5);
  EXPECT_LT(row_orthonormality_error(krylov.vt.data(), rank, 700, 700, 1), 2e-5);
  const double optimum = tail_norm(k.s0, rank);
  EXPECT_LE(reconstruction_error(k.a, krylov), 1.001 * optimum);
  EXPECT_LT(reconstruction_error(k.a, krylov), reconstruction_error(k.a, subspace));
}

TEST(Svd, BlockKrylovMatchesAKnownSpectrumWideAndTall) {
  for (const auto& [rows, cols] : {std::pair<std::int64_t, std::int64_t>{300, 700}, {700, 300}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
    const KnownSvd k = known_matrix(rows, cols, geometric(std::min(rows, cols), 0.97), kSeed + 31);
    // Default block size: ceil((24 + 10) / 3) = 12, 4 iterations: a 60-column space. s_24 / s_60 =
    // 1.0097^36 = 3: the values come out within 0.5% of s_1 (0.2% measured), the truncation error
    // within 0.1% of the optimum.
    check_svd(k, 24, {SvdAlgorithm::block_krylov, 10, 4, 5}, 5e-3, 1e-3);
  }
}

TEST(Svd, BlockKrylovIsExactOnALowRankMatrix) {
  // Rank 20 in 150 x 250: the Krylov space runs out after 2 blocks of 10; the later blocks are
  // rounding noise, which the reorthogonalization check in block_krylov_svd keeps orthogonal to the
  // first ones (without it, U was off orthonormal by 5e-3 here).
  std::vector<double> s0 = power_law(20, 1.0);
  const KnownSvd k = known_matrix(150, 250, s0, kSeed + 32);
  s0.resize(150, 0.0);
  KnownSvd padded = k;
  padded.s0 = s0;
  check_svd(padded, 20, {SvdAlgorithm::block_krylov, 10, 3, 3, 10}, 1e-5, 1e-3);
  check_svd(padded, 10, {SvdAlgorithm::block_krylov, 0, 4, 3, 8}, 1e-5, 1e-3);
}

TEST(Svd, SteepSpectraKeepTheFactorsOrthonormal) {
  // s_40 / s_1 = 1/40, under rayleigh_ritz's Gram threshold: the values and V come from the SVD of
  // Z = A^T Q instead of the eigenvectors of Z^T Z.
  for (SvdAlgorithm algorithm : {SvdAlgorithm::randomized, SvdAlgorithm::block_krylov}) {
    SCOPED_TRACE(int(algorithm));
    const KnownSvd k = known_matrix(300, 700, power_law(300, 1.0), kSeed + 33);
    check_svd(k, 40, {algorithm, 10, 3, 9, 25}, 2e-3, 1e-2);
  }
}

TEST(Svd, AutomaticPicksAWorkingAlgorithm) {
  const KnownSvd k = known_matrix(120, 300, power_law(120, 0.8), kSeed + 3);
  check_svd(k, 8, {}, 1e-3, 1e-2);   // sketch 18 <= 120 / 4: randomized
  check_svd(k, 60, {}, 1e-6, 1e-4);  // full
}

TEST(Svd, BadInputThrows) {
  std::vector<float> a(6 * 4, 1.0f);
  EXPECT_THROW(truncated_svd(a, 6, 4, 0, {}), Error);
  EXPECT_THROW(truncated_svd(a, 6, 4, 5, {}), Error);
  EXPECT_THROW(truncated_svd(a, 6, 4, -1, {}), Error);
  EXPECT_THROW(truncated_svd(a, 6, 5, 2, {}), Error);  // size mismatch
  EXPECT_THROW(truncated_svd(a, 6, 4, 2, {SvdAlgorithm::randomized, -1, 2, 0}), Error);
  EXPECT_THROW(truncated_svd(a, 6, 4, 2, {SvdAlgorithm::block_krylov, 2, 2, 0, -1}), Error);
  a[9] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(truncated_svd(a, 6, 4, 2, {}), Error);
  a[9] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(truncated_svd(a, 6, 4, 2, {SvdAlgorithm::full, 10, 2, 0}), Error);
  EXPECT_THROW(set_blas_threads(0), Error);
}

TEST(Svd, SameBitsForAnyBlasOrOpenMpThreadCount) {
  const ThreadCounts restore;
  const KnownSvd wide = known_matrix(300, 900, power_law(300, 0.5), kSeed + 4);
  const KnownSvd tall = known_matrix(900, 300, power_law(300, 0.5), kSeed + 5);
  for (const KnownSvd* k : {&wide, &tall})
    for (SvdAlgorithm algorithm : {SvdAlgorithm::full, SvdAlgorithm::randomized, SvdAlgorithm::block_krylov}) {
      SCOPED_TRACE(std::to_string(k->rows) + "x" + std::to_string(k->cols) + " algorithm " +
                   std::to_string(int(algorithm)));
      const SvdOptions options{algorithm, 10, 2, 11, 16};
      set_blas_threads(1);
      omp_set_num_threads(1);
      const Svd reference = truncated_svd(k->a, k->rows, k->cols, 40, options);
      set_blas_threads(2);
      EXPECT_TRUE(same_bits(reference, truncated_svd(k->a, k->rows, k->cols, 40, options))) << "BLAS threads 2";
      omp_set_num_threads(2);
      EXPECT_TRUE(same_bits(reference, truncated_svd(k->a, k->rows, k->cols, 40, options))) << "OpenMP threads 2";
      set_blas_threads(1);
      omp_set_num_threads(3);
      EXPECT_TRUE(same_bits(reference, truncated_svd(k->a, k->rows, k->cols, 40, options))) << "OpenMP threads 3";
    }
}

TEST(Svd, ConcurrentCallersFromOpenMpThreadsGetTheSerialBits) {
  // The quantize pipeline runs methods inside an OpenMP loop over layers, BLAS threads set to 1.
  const ThreadCounts restore;
  set_blas_threads(1);
  std::vector<KnownSvd> inputs;
  for (int i = 0; i < 6; ++i) inputs.push_back(known_matrix(160 + 20 * i, 240, power_law(160, 0.7), kSeed + 10 + i));
  std::vector<Svd> serial, parallel(inputs.size());
  for (const KnownSvd& k : inputs)
    serial.push_back(truncated_svd(k.a, k.rows, k.cols, 24, {SvdAlgorithm::randomized, 10, 2, 5}));
  omp_set_num_threads(3);
#pragma omp parallel for schedule(dynamic, 1)
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    set_blas_threads(1);
    const SvdAlgorithm algorithm = i % 2 ? SvdAlgorithm::full : SvdAlgorithm::randomized;
    if (algorithm == SvdAlgorithm::randomized)
      parallel[i] =
          truncated_svd(inputs[i].a, inputs[i].rows, inputs[i].cols, 24, {SvdAlgorithm::randomized, 10, 2, 5});
    else
      parallel[i] = truncated_svd(inputs[i].a, inputs[i].rows, inputs[i].cols, 24, {SvdAlgorithm::full, 10, 2, 5});
  }
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    SCOPED_TRACE(i);
    if (i % 2 == 0) {
      EXPECT_TRUE(same_bits(serial[i], parallel[i]));
    } else {
      const Svd full = truncated_svd(inputs[i].a, inputs[i].rows, inputs[i].cols, 24, {SvdAlgorithm::full, 10, 2, 5});
      EXPECT_TRUE(same_bits(full, parallel[i]));
    }
  }
}

TEST(Svd, TheSeedChoosesTheSketch) {
  const KnownSvd k = known_matrix(200, 300, power_law(200, 0.3), kSeed + 20);
  const Svd a = truncated_svd(k.a, 200, 300, 16, {SvdAlgorithm::randomized, 4, 0, 1});
  const Svd b = truncated_svd(k.a, 200, 300, 16, {SvdAlgorithm::randomized, 4, 0, 1});
  const Svd c = truncated_svd(k.a, 200, 300, 16, {SvdAlgorithm::randomized, 4, 0, 2});
  EXPECT_TRUE(same_bits(a, b));
  EXPECT_FALSE(same_bits(a, c));
}

}  // namespace
}  // namespace loraq::linalg
