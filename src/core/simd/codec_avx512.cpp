// The vectorized codecs for AVX-512 (compiled with -mavx512f/bw/dq/vl; see CMakeLists.txt).
#include "vec_avx512.hpp"
// clang-format off
#include "codec_kernels.hpp"
// clang-format on

namespace loraq::detail {
const VectorKernels* avx512_kernels() { return kernel_table<VecAvx512>(); }
}  // namespace loraq::detail
