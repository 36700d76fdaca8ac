// Small dense double-precision products and solves (LoRaQ's rotation Omega, rank x rank): serial
// cblas_dgemm and LAPACK dgesv, so that the bits never depend on a thread count.
#include <cblas.h>

#include <string>
#include <vector>

#include "linalg/blas_support.hpp"
#include "loraq/error.hpp"
#include "loraq/linalg.hpp"

extern "C" {
// LAPACK's Fortran entry point (in libopenblas); no CHARACTER arguments.
void dgesv_(const int* n, const int* nrhs, double* a, const int* lda, int* ipiv, double* b, const int* ldb, int* info);
}

namespace loraq::linalg {

void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
          const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c,
          std::int64_t ldc) {
  if (m < 0 || n < 0 || k < 0)
    throw Error("gemm: negative size m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
  if (m == 0 || n == 0) return;
  hold_openblas_serial();
  cblas_dgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans,
              blas_int(m, "m"), blas_int(n, "n"), blas_int(k, "k"), alpha, a, blas_int(lda, "lda"), b,
              blas_int(ldb, "ldb"), beta, c, blas_int(ldc, "ldc"));
}

void solve(std::span<double> a, std::span<double> b, std::int64_t n, std::int64_t nrhs) {
  if (n < 0 || nrhs < 0 || std::int64_t(a.size()) != n * n || std::int64_t(b.size()) != n * nrhs)
    throw Error("solve: A must be " + std::to_string(n) + " x " + std::to_string(n) + " and B " + std::to_string(n) +
                " x " + std::to_string(nrhs));
  if (n == 0 || nrhs == 0) return;
  hold_openblas_serial();
  // LAPACK is column-major: hand it A and B transposed (their column-major forms), and read X back.
  std::vector<double> a_cm(a.size()), b_cm(b.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) a_cm[std::size_t(i + j * n)] = a[std::size_t(i * n + j)];
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < nrhs; ++j) b_cm[std::size_t(i + j * n)] = b[std::size_t(i * nrhs + j)];
  const int in = blas_int(n, "n"), inrhs = blas_int(nrhs, "nrhs");
  std::vector<int> pivots(static_cast<std::size_t>(n));
  int info = 0;
  dgesv_(&in, &inrhs, a_cm.data(), &in, pivots.data(), b_cm.data(), &in, &info);
  if (info != 0)
    throw Error(info > 0 ? "solve: the matrix is singular (zero pivot " + std::to_string(info) + ")"
                         : "solve: LAPACK dgesv rejected argument " + std::to_string(-info));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < nrhs; ++j) b[std::size_t(i * nrhs + j)] = b_cm[std::size_t(i + j * n)];
}

}  // namespace loraq::linalg
