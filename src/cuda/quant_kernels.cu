// The quantization kernels (quant_kernels.cuh): one warp per block of a row, as device_codec.cuh
// quantizes; sums of squares reduced in a fixed tree so that a run's bits never change.
#include "cuda/cuda_support.cuh"
#include "cuda/quant_kernels.cuh"

namespace loraq::cuda::detail {
namespace {

constexpr int kWarpsPerRow = 8;  // a thread block of 256 per row

// Loads the warp's block `b` of a row into x[] (0 outside the row).
__device__ void load_block(const float* row, std::int64_t cols, std::int64_t b, const DeviceFormat& g,
                           float (&x)[kMaxPerLane]) {
  const int lane = threadIdx.x % 32;
  for (int j = 0; j < g.block / 32; ++j) {
    const std::int64_t c = b * g.block + lane + 32 * j;
    x[j] = c < cols ? row[c] : 0.0f;
  }
}

__global__ void fake_quantize_kernel(const float* in, float* out, std::int64_t rows, std::int64_t cols,
                                     DeviceFormat g) {
  const std::int64_t blocks_per_row = (cols + g.block - 1) / g.block;
  const std::int64_t warp = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (warp >= rows * blocks_per_row) return;  // whole warps leave together
  const std::int64_t r = warp / blocks_per_row, b = warp % blocks_per_row;
  float x[kMaxPerLane];
  load_block(in + r * cols, cols, b, g, x);
  quantize_block_warp(x, g);
  const int lane = threadIdx.x % 32;
  for (int j = 0; j < g.block / 32; ++j) {
    const std::int64_t c = b * g.block + lane + 32 * j;
    if (c < cols) out[r * cols + c] = x[j];
  }
}

// Sum over the thread block, in a fixed tree: lanes by shuffles, then the warps in order.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[32];
  for (int offset = 16; offset > 0; offset /= 2) v = __dadd_rn(v, __shfl_down_sync(0xFFFFFFFFu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < int(blockDim.x / 32); ++w) total = __dadd_rn(total, warp_sums[w]);
  return total;  // meaningful on thread 0
}

__global__ void quantization_error_kernel(const float* x, const float* y, float* e, double* row_ss, std::int64_t cols,
                                          DeviceFormat g) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t blocks_per_row = (cols + g.block - 1) / g.block;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* xr = x + r * cols;
  const float* yr = y ? y + r * cols : nullptr;
  float* er = e + r * cols;
  double ss = 0;
  for (std::int64_t b = warp; b < blocks_per_row; b += kWarpsPerRow) {
    float t[kMaxPerLane], q[kMaxPerLane];
    for (int j = 0; j < g.block / 32; ++j) {
      const std::int64_t c = b * g.block + lane + 32 * j;
      t[j] = c < cols ? (yr ? __fsub_rn(xr[c], yr[c]) : xr[c]) : 0.0f;
      q[j] = t[j];
    }
    quantize_block_warp(q, g);
    for (int j = 0; j < g.block / 32; ++j) {
      const std::int64_t c = b * g.block + lane + 32 * j;
      if (c >= cols) continue;
      const float err = __fsub_rn(q[j], t[j]);
      er[c] = err;
      ss = __fma_rn(double(err), double(err), ss);
    }
  }
  const double total = block_sum(ss);
  if (threadIdx.x == 0) row_ss[r] = total;
}

__global__ void sum_kernel(const double* v, std::int64_t n, double* total) {
  double s = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) s = __dadd_rn(s, v[i]);
  const double t = block_sum(s);
  if (threadIdx.x == 0) *total = t;
}

}  // namespace

void fake_quantize_device(const DeviceFormat& g, const float* in, float* out, std::int64_t rows, std::int64_t cols,
                          cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  const std::int64_t warps = rows * ((cols + g.block - 1) / g.block);
  constexpr int kThreads = 256;
  fake_quantize_kernel<<<grid_for(warps * 32, kThreads), kThreads, 0, stream>>>(in, out, rows, cols, g);
  check_launch("fake_quantize_kernel");
}

void quantization_error_device(const DeviceFormat& g, const float* x, const float* y, float* e, double* row_ss,
                               std::int64_t rows, std::int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  quantization_error_kernel<<<unsigned(rows), 32 * kWarpsPerRow, 0, stream>>>(x, y, e, row_ss, cols, g);
  check_launch("quantization_error_kernel");
}

void sum_device(const double* v, std::int64_t n, double* total, cudaStream_t stream) {
  sum_kernel<<<1, 256, 0, stream>>>(v, n, total);
  check_launch("sum_kernel");
}

}  // namespace loraq::cuda::detail
