// What the backend's device code includes first: CUDA's headers under nvcc, or, for the tests,
// simt_emulation.hpp's host stand-ins (LORAQ_SIMT_EMULATION), and the namespace the device code
// lives in, which differs between the two so that a test binary may hold both.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef LORAQ_SIMT_EMULATION
#include "cuda/simt_emulation.hpp"
#define LORAQ_CUDA_DEVICE_NS loraq::cuda::emulated
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/cuda_support.cuh"
#define LORAQ_CUDA_DEVICE_NS loraq::cuda::detail
#endif

namespace LORAQ_CUDA_DEVICE_NS {

// kernel<<<grid, block, 0, stream>>>(args...), then the launch's error named `what`; emulated, the
// kernel runs on the CPU before this returns.
template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, const char* what,
                   Args... args) {
#ifdef LORAQ_SIMT_EMULATION
  (void)stream, (void)what;
  simt::launch(grid, block, [&] { kernel(Params(args)...); });
#else
  kernel<<<grid, block, 0, stream>>>(Params(args)...);
  check(cudaGetLastError(), what);
#endif
}

// Zeros `count` ints at p, in stream order.
inline void fill_zero(int* p, std::int64_t count, cudaStream_t stream) {
#ifdef LORAQ_SIMT_EMULATION
  (void)stream;
  std::memset(p, 0, std::size_t(count) * sizeof(int));
#else
  check(cudaMemsetAsync(p, 0, std::size_t(count) * sizeof(int), stream), "cudaMemsetAsync");
#endif
}

}  // namespace LORAQ_CUDA_DEVICE_NS
