// GEMM on OpenBLAS (cblas), split by us into fixed panels run on OpenMP threads.
//
// Why split here rather than let OpenBLAS thread: its threaded SGEMM rounds differently from its
// serial one (blas_support.hpp), so the bits would follow the thread count. Here OpenBLAS always
// runs serially and the output is cut into panels whose bounds depend only on the shape; each
// panel is one serial cblas_sgemm, so any thread count computes every element with the same
// operations. The kernels themselves are OpenBLAS's: a hand-written loop here would not beat them
// (bench/bench_svd.cpp reports the SGEMM GFLOP/s next to the SVD timings).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "linalg/blas_support.hpp"
#include "loraq/error.hpp"
#include "loraq/linalg.hpp"

namespace loraq::linalg {
namespace {

// Panels of the longer output side. 256 rows or columns keeps OpenBLAS's repacking of the shared
// operand (once per panel) small against the panel's own work, and still gives PixArt's shapes
// (1152, 4608) 5 to 18 panels to balance over threads. Products under kMinSplitFlops are not worth
// a parallel region.
constexpr std::int64_t kPanel = 256;
constexpr double kMinSplitFlops = 1 << 23;

thread_local int tl_threads = 0;  // 0: OpenMP's default for this thread

// cblas_sgemm reports a bad stride through xerbla (a line on stderr) and returns without touching
// C; callers get an Error naming the argument instead.
void check_stride(const char* what, std::int64_t ld, std::int64_t stored_cols) {
  if (ld < std::max<std::int64_t>(1, stored_cols))
    throw Error("gemm: " + std::string(what) + " = " + std::to_string(ld) + " is below the stored row length " +
                std::to_string(stored_cols));
}

}  // namespace

void hold_openblas_serial() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  if (m < 0 || n < 0 || k < 0)
    throw Error("gemm: negative size m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
  // Row-major storage: op(A) is [m, k], so A is stored [m, k] or, transposed, [k, m].
  check_stride("lda", lda, transpose_a ? m : k);
  check_stride("ldb", ldb, transpose_b ? k : n);
  check_stride("ldc", ldc, n);
  if (m == 0 || n == 0) return;
  hold_openblas_serial();
  const int ilda = blas_int(lda, "lda"), ildb = blas_int(ldb, "ldb"), ildc = blas_int(ldc, "ldc");
  const int ik = blas_int(k, "k");
  blas_int(m, "m");
  blas_int(n, "n");
  const CBLAS_TRANSPOSE ta = transpose_a ? CblasTrans : CblasNoTrans, tb = transpose_b ? CblasTrans : CblasNoTrans;

  // Panels along the longer side of C: rows of C come from rows of op(A), columns from op(B).
  const bool split_rows = m >= n;
  const std::int64_t length = split_rows ? m : n;
  const bool worth_splitting = 2.0 * double(m) * double(n) * double(k) >= kMinSplitFlops;
  const std::int64_t panels = worth_splitting ? (length + kPanel - 1) / kPanel : 1;
  const std::int64_t panel = panels == 1 ? length : kPanel;
  const int threads = int(std::min<std::int64_t>(blas_threads(), panels));
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (std::int64_t p = 0; p < panels; ++p) {
    const std::int64_t begin = p * panel, size = std::min(panel, length - begin);
    if (split_rows) {  // rows [begin, begin + size) of op(A) and of C
      const float* a_panel = transpose_a ? a + begin : a + begin * lda;
      cblas_sgemm(CblasRowMajor, ta, tb, int(size), int(n), ik, alpha, a_panel, ilda, b, ildb, beta, c + begin * ldc,
                  ildc);
    } else {  // columns [begin, begin + size) of op(B) and of C
      const float* b_panel = transpose_b ? b + begin * ldb : b + begin;
      cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(size), ik, alpha, a, ilda, b_panel, ildb, beta, c + begin, ildc);
    }
  }
}

void set_blas_threads(int threads) {
  if (threads < 1) throw Error("set_blas_threads: " + std::to_string(threads) + " threads, expected at least 1");
  tl_threads = threads;
}

int blas_threads() { return tl_threads > 0 ? tl_threads : omp_get_max_threads(); }

}  // namespace loraq::linalg
