// Which OpenBLAS kernels run (linalg.hpp: running_blas_core, wanted_blas_core, use_widest_blas_kernels).
//
// Why: OpenBLAS's DYNAMIC_ARCH builds (Debian's) choose their kernels once, when the library loads,
// from the CPU's family and model. A CPU newer than the library is not in its table, and gets the
// SSE3 "Prescott" kernels: Debian 12's 0.3.21 on Emerald Rapids ran SGEMM at 57 GFLOP/s there
// (2 threads) against 230-250 with OPENBLAS_CORETYPE=SkylakeX (docs/performance.md); 0.3.21
// predates Zen 5 as well. The documented remedy is the environment variable, read when the library
// loads; so a program sets it and re-executes itself.
#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>

#include "loraq/isa.hpp"
#include "loraq/linalg.hpp"

namespace loraq::linalg {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

}  // namespace

std::string running_blas_core() {
  const char* name = openblas_get_corename();
  return name ? std::string(name) : std::string();
}

std::string wanted_blas_core() {
  if (std::getenv("OPENBLAS_CORETYPE")) return "";  // the caller's choice stands
  // SkylakeX's kernels need AVX-512 F/CD/BW/DQ/VL; every CPU with the F/BW/DQ/VL that Isa::avx512
  // checks has CD too (Skylake-SP onwards, Zen 4 onwards).
  if (isa_available(Isa::avx512)) return "SkylakeX";
  if (isa_available(Isa::avx2)) return "Haswell";
  return "";
}

void use_widest_blas_kernels(char** argv) {
  const std::string wanted = wanted_blas_core();
  if (wanted.empty() || lower(running_blas_core()) == lower(wanted)) return;
  // After the exec the variable is set, so wanted_blas_core() is "" and this returns at once.
  if (setenv("OPENBLAS_CORETYPE", wanted.c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // the exec failed: go on with the kernels already loaded
}

}  // namespace loraq::linalg
