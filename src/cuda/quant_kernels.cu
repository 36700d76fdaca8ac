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
#pragma unroll
  for (int j = 0; j < kMaxPerLane && j < g.block / 32; ++j) {
    const std::int64_t c = b * g.block + lane + 32 * j;
    x[j] = c < cols ? row[c] : 0.0f;
  }
}

// Blocks one warp quantizes in a row: their loads are all issued before the first reduction, so each
// lane has several loads in flight (one 128-byte load per warp at a time left the H200 at a quarter
// of its copy bandwidth).
constexpr int kBlocksPerWarp = 4;

// Grid: x = rows, y = chunks of kWarpsPerRow groups of a row; no 64-bit division per thread (the
// emulated division cost more instructions than quantizing the warp's values).
__global__ void fake_quantize_kernel(const float* in, float* out, std::int64_t cols, DeviceFormat g) {
  const std::int64_t blocks_per_row = (cols + g.block - 1) / g.block;
  const std::int64_t r = blockIdx.x;
  const std::int64_t b0 = (std::int64_t(blockIdx.y) * kWarpsPerRow + threadIdx.x / 32) * kBlocksPerWarp;
  if (b0 >= blocks_per_row) return;  // whole warps leave together
  const int count = int(blocks_per_row - b0 < kBlocksPerWarp ? blocks_per_row - b0 : kBlocksPerWarp);
  float x[kBlocksPerWarp][kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kBlocksPerWarp; ++i)
    if (i < count) load_block(in + r * cols, cols, b0 + i, g, x[i]);
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < kBlocksPerWarp; ++i) {
    if (i >= count) break;  // the same for the whole warp
    quantize_block_warp(x[i], g);
#pragma unroll
    for (int j = 0; j < kMaxPerLane && j < g.block / 32; ++j) {
      const std::int64_t c = (b0 + i) * g.block + lane + 32 * j;
      if (c < cols) out[r * cols + c] = x[i][j];
    }
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
  // Two of the warp's blocks per pass (b and b + kWarpsPerRow), loaded before either is reduced so
  // that their loads overlap; ss still adds them in the order of b, as one block a pass did.
  constexpr int kPair = 2;
  for (std::int64_t b = warp; b < blocks_per_row; b += kPair * kWarpsPerRow) {
    float t[kPair][kMaxPerLane], q[kPair][kMaxPerLane];
#pragma unroll
    for (int i = 0; i < kPair; ++i) {
      const std::int64_t bi = b + i * kWarpsPerRow;
#pragma unroll
      for (int j = 0; j < kMaxPerLane && j < g.block / 32; ++j) {
        const std::int64_t c = bi * g.block + lane + 32 * j;
        t[i][j] = bi < blocks_per_row && c < cols ? (yr ? __fsub_rn(xr[c], yr[c]) : xr[c]) : 0.0f;
        q[i][j] = t[i][j];
      }
    }
#pragma unroll
    for (int i = 0; i < kPair; ++i) {
      const std::int64_t bi = b + i * kWarpsPerRow;
      if (bi >= blocks_per_row) break;  // the same for the whole warp
      quantize_block_warp(q[i], g);
#pragma unroll
      for (int j = 0; j < kMaxPerLane && j < g.block / 32; ++j) {
        const std::int64_t c = bi * g.block + lane + 32 * j;
        if (c >= cols) continue;
        const float err = __fsub_rn(q[i][j], t[i][j]);
        er[c] = err;
        ss = __fma_rn(double(err), double(err), ss);
      }
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
  const std::int64_t blocks_per_row = (cols + g.block - 1) / g.block;
  const std::int64_t groups = (blocks_per_row + kBlocksPerWarp - 1) / kBlocksPerWarp;
  const std::int64_t chunks = (groups + kWarpsPerRow - 1) / kWarpsPerRow;
  if (rows > 0x7FFFFFFF || chunks > 65535)
    throw Error("cuda fake_quantize: " + std::to_string(rows) + " x " + std::to_string(cols) +
                " is beyond the kernel's grid (2^31 - 1 rows, 67 million values a row)");
  fake_quantize_kernel<<<dim3(unsigned(rows), unsigned(chunks)), 32 * kWarpsPerRow, 0, stream>>>(in, out, cols, g);
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
