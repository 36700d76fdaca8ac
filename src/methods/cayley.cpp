// Cayley SGD on the orthogonal group: LoRaQ's rotation Omega (section 3.3, "Rotation aware method"),
// trained as SpinQuant trains its rotations. Omega is rank x rank (at most a few hundred): its
// products and the Cayley solve run in double on the BLAS and LAPACK (serial, so the bits never
// depend on threads), exact enough that Omega stays orthogonal to ~1e-15.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "loraq/error.hpp"
#include "loraq/linalg.hpp"
#include "methods/loraq_impl.hpp"

namespace loraq::methods::loraq_impl {
namespace {

using Matrix = std::vector<double>;  // n x n, row-major

}  // namespace

double cayley_step(std::span<double> omega, std::span<const double> grad, std::int64_t n, double lr) {
  if (std::int64_t(omega.size()) != n * n || std::int64_t(grad.size()) != n * n)
    throw Error("cayley_step: Omega and its gradient must be " + std::to_string(n) + " x " + std::to_string(n));
  // W = (Omega G^T - G Omega^T) / 2 = (P - P^T) / 2 with P = Omega G^T.
  Matrix p(std::size_t(n * n));
  linalg::gemm(false, true, n, n, n, 1.0, omega.data(), n, grad.data(), n, 0.0, p.data(), n);
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
  Matrix rhs(std::size_t(n * n));
  linalg::gemm(false, false, n, n, n, 1.0, w.data(), n, omega.data(), n, 0.0, rhs.data(), n);
  for (std::size_t i = 0; i < rhs.size(); ++i) rhs[i] = omega[i] + h * rhs[i];
  // I - alpha/2 W, W skew, has symmetric part I: never singular, condition number at most
  // 1 + alpha ||W|| / 2.
  linalg::solve(a, rhs, n, n);
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
