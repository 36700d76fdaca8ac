// Cayley SGD on the orthogonal group: LoRaQ's rotation Omega (section 3.3, "Rotation aware method"),
// trained as SpinQuant trains its rotations. Omega is rank x rank (at most a few hundred), so the
// products here are plain loops in double: exact enough that Omega stays orthogonal to ~1e-15.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "loraq/error.hpp"
#include "methods/loraq_impl.hpp"

namespace loraq::methods::loraq_impl {
namespace {

using Matrix = std::vector<double>;  // n x n, row-major

// c = a b, in i-k-j order: the inner loop runs along rows and vectorizes.
Matrix multiply(const double* a, const double* b, std::int64_t n) {
  Matrix c(std::size_t(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    double* ci = c.data() + i * n;
    for (std::int64_t k = 0; k < n; ++k) {
      const double aik = a[i * n + k];
      const double* bk = b + k * n;
      for (std::int64_t j = 0; j < n; ++j) ci[j] += aik * bk[j];
    }
  }
  return c;
}

// Solves a x = b in place (b: n right-hand sides as the columns of an n x n matrix) by Gaussian
// elimination with partial pivoting. Here a = I - (alpha/2) W with W skew, whose symmetric part is
// I: it is never singular and its condition number is at most 1 + alpha ||W|| / 2.
void solve(Matrix& a, Matrix& b, std::int64_t n) {
  for (std::int64_t k = 0; k < n; ++k) {
    std::int64_t p = k;
    for (std::int64_t i = k + 1; i < n; ++i)
      if (std::abs(a[std::size_t(i * n + k)]) > std::abs(a[std::size_t(p * n + k)])) p = i;
    if (p != k)
      for (std::int64_t j = 0; j < n; ++j) {
        std::swap(a[std::size_t(k * n + j)], a[std::size_t(p * n + j)]);
        std::swap(b[std::size_t(k * n + j)], b[std::size_t(p * n + j)]);
      }
    const double pivot = a[std::size_t(k * n + k)];
    for (std::int64_t i = k + 1; i < n; ++i) {
      const double f = a[std::size_t(i * n + k)] / pivot;
      if (f == 0) continue;
      for (std::int64_t j = k; j < n; ++j) a[std::size_t(i * n + j)] -= f * a[std::size_t(k * n + j)];
      for (std::int64_t j = 0; j < n; ++j) b[std::size_t(i * n + j)] -= f * b[std::size_t(k * n + j)];
    }
  }
  for (std::int64_t k = n - 1; k >= 0; --k) {
    double* bk = b.data() + k * n;
    for (std::int64_t i = k + 1; i < n; ++i) {
      const double f = a[std::size_t(k * n + i)];
      const double* bi = b.data() + i * n;
      for (std::int64_t j = 0; j < n; ++j) bk[j] -= f * bi[j];
    }
    const double inv = 1.0 / a[std::size_t(k * n + k)];
    for (std::int64_t j = 0; j < n; ++j) bk[j] *= inv;
  }
}

}  // namespace

double cayley_step(std::span<double> omega, std::span<const double> grad, std::int64_t n, double lr) {
  if (std::int64_t(omega.size()) != n * n || std::int64_t(grad.size()) != n * n)
    throw Error("cayley_step: Omega and its gradient must be " + std::to_string(n) + " x " + std::to_string(n));
  // W = (Omega G^T - G Omega^T) / 2 = (P - P^T) / 2 with P = Omega G^T.
  Matrix grad_t(std::size_t(n * n));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) grad_t[std::size_t(j * n + i)] = grad[std::size_t(i * n + j)];
  const Matrix p = multiply(omega.data(), grad_t.data(), n);
  Matrix w(std::size_t(n * n));
  double norm_one = 0;  // max column sum of |W| (SpinQuant's matrix_norm_one)
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j)
      w[std::size_t(i * n + j)] = 0.5 * (p[std::size_t(i * n + j)] - p[std::size_t(j * n + i)]);
  for (std::int64_t j = 0; j < n; ++j) {
    double col = 0;
    for (std::int64_t i = 0; i < n; ++i) col += std::abs(w[std::size_t(i * n + j)]);
    norm_one = std::max(norm_one, col);
  }
  // Li et al.'s step bound 2q / ||W|| with q = 1/2 keeps the step inside the region where their
  // fixed-point iteration contracts; we keep it so that steps are the same as theirs.
  const double alpha = std::min(lr, 1.0 / (norm_one + 1e-8));
  if (alpha <= 0) return 0;

  // (I - alpha/2 W) Omega' = (I + alpha/2 W) Omega.
  const double h = 0.5 * alpha;
  Matrix a(std::size_t(n * n));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j)
      a[std::size_t(i * n + j)] = (i == j ? 1.0 : 0.0) - h * w[std::size_t(i * n + j)];
  Matrix rhs = multiply(w.data(), omega.data(), n);
  for (std::size_t i = 0; i < rhs.size(); ++i) rhs[i] = omega[i] + h * rhs[i];
  solve(a, rhs, n);
  std::copy(rhs.begin(), rhs.end(), omega.begin());
  return alpha;
}

double orthogonality_error(std::span<const double> omega, std::int64_t n) {
  double worst = 0;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t k = 0; k < n; ++k) s += omega[std::size_t(k * n + i)] * omega[std::size_t(k * n + j)];
      worst = std::max(worst, std::abs(s - (i == j ? 1.0 : 0.0)));
    }
  return worst;
}

}  // namespace loraq::methods::loraq_impl
