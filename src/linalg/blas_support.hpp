// What src/linalg's files share: 32-bit BLAS sizes, and OpenBLAS held at one thread of its own.
#pragma once

#include <climits>
#include <cstdint>
#include <string>

#include "loraq/error.hpp"

namespace loraq::linalg {

// Sizes handed to OpenBLAS/LAPACK: 32-bit integers in Debian's build (USE_64BITINT is off).
inline int blas_int(std::int64_t value, const char* what) {
  if (value < 0 || value > INT_MAX)
    throw Error(std::string("linalg: ") + what + " = " + std::to_string(value) +
                " does not fit the BLAS's 32-bit integers");
  return int(value);
}

// Sets OpenBLAS's own (process-wide) thread count to 1, once. Its threaded paths give other bits
// than its serial ones (a thread-count-dependent K blocking in level3_thread.c and SGEMM "direct"
// path; measured on 0.3.21, sgemm, sgeqrf and sgesdd all differ between 1 and 2 threads), so
// linalg does its own splitting into fixed panels (gemm.cpp) and OpenBLAS never threads. Every
// linalg entry point calls this before its first BLAS call.
void hold_openblas_serial();

}  // namespace loraq::linalg
