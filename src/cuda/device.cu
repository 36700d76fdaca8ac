// Device discovery for the CUDA backend.
#include <cuda_runtime.h>

#include "loraq/cuda.hpp"

namespace loraq::cuda {
bool built() { return true; }
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a machine without a driver
    return 0;
  }
  return count;
}
}  // namespace loraq::cuda
