// The vectorized codecs for AVX2 (compiled with -mavx2 -mfma -mf16c -mbmi2; see CMakeLists.txt).
#include "vec_avx2.hpp"
// clang-format off
#include "codec_kernels.hpp"
// clang-format on

namespace loraq::detail {
const VectorKernels* avx2_kernels() { return kernel_table<VecAvx2>(); }
}  // namespace loraq::detail
