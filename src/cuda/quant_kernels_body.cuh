// The definitions of quant_kernels.cuh: the quantization kernels in two layouts (kernel_variants.hpp),
// warp, one warp per block of a row as device_codec.cuh quantizes, and vector, 16-byte loads with each
// block's amax reduced over the lanes that hold it, and their launches. Both quantize every value with
// device_codec.cuh's quantize_in_block, so they give the same bits; sums of squares are reduced in a
// fixed tree so that a run's bits never change.
//
// A header so that two translation units compile it: quant_kernels.cu under nvcc, and the SIMT
// emulation's test (tests/cpp/test_cuda_emulated.cpp), which runs these kernels on the CPU.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "cuda/device_codec.cuh"
#include "cuda/device_prelude.cuh"
#include "cuda/kernel_variants.hpp"
#include "loraq/error.hpp"

namespace LORAQ_CUDA_DEVICE_NS {
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

// The vector layout: lane l of a warp holds values 4l .. 4l + 3 of a 128-value segment of a row (one
// 16-byte load), so a warp reads 512 contiguous bytes and a block is the 8 lanes (16 for sint4's
// 64-value blocks) of an aligned lane group; 128 is a multiple of both block sizes, so no block
// straddles two segments. Rows need cols % 4 == 0 and 16-byte alignment.
constexpr int kSegment = 128;
constexpr int kSegmentsPerWarp = 2;  // 16-byte loads in flight per lane before the first reduction

__device__ inline unsigned abs_bits(float v) { return __float_as_uint(v) & 0x7FFFFFFFu; }

// The largest |x| (as bits, NaN and Inf above every finite value) of the block holding v, over its
// lanes: xor shuffles stay within aligned groups of g.block / 4 lanes, and max is exact in any
// order. Every lane of the warp must call it (values past the row's end are 0, which changes no amax).
__device__ inline unsigned block_amax(const float4& v, const DeviceFormat& g) {
  unsigned a = max(max(abs_bits(v.x), abs_bits(v.y)), max(abs_bits(v.z), abs_bits(v.w)));
  for (int offset = 1; offset < g.block / 4; offset *= 2) a = max(a, __shfl_xor_sync(0xFFFFFFFFu, a, offset));
  return a;
}

__device__ inline float4 quantize4(const float4& v, unsigned amax, const DeviceFormat& g) {
  return make_float4(quantize_in_block(v.x, amax, g), quantize_in_block(v.y, amax, g), quantize_in_block(v.z, amax, g),
                     quantize_in_block(v.w, amax, g));
}

__device__ inline float4 sub4(const float4& a, const float4& b) {
  return make_float4(__fsub_rn(a.x, b.x), __fsub_rn(a.y, b.y), __fsub_rn(a.z, b.z), __fsub_rn(a.w, b.w));
}

// One warp per item: kSegmentsPerWarp consecutive segments of a row, items_per_row items a row, the
// kWarpsPerRow warps of a thread block on consecutive items (a thread block per row would leave most
// of its warps idle on 1152-value rows). items < 2^32 (the host checks), so the division is 32-bit.
__global__ void fake_quantize_vector_kernel(const float* in, float* out, std::int64_t cols, unsigned items,
                                            unsigned items_per_row, DeviceFormat g) {
  const unsigned item = blockIdx.x * unsigned(kWarpsPerRow) + threadIdx.x / 32;
  if (item >= items) return;  // whole warps leave together
  const std::int64_t r = item / items_per_row, s0 = std::int64_t(item % items_per_row) * kSegmentsPerWarp;
  const int lane = threadIdx.x % 32;
  float4 v[kSegmentsPerWarp];
#pragma unroll
  for (int i = 0; i < kSegmentsPerWarp; ++i) {
    const std::int64_t c = (s0 + i) * kSegment + 4 * lane;  // c < cols means c + 3 < cols
    v[i] = c < cols ? *reinterpret_cast<const float4*>(in + r * cols + c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
#pragma unroll
  for (int i = 0; i < kSegmentsPerWarp; ++i) {
    const unsigned amax = block_amax(v[i], g);
    const std::int64_t c = (s0 + i) * kSegment + 4 * lane;
    if (c < cols) *reinterpret_cast<float4*>(out + r * cols + c) = quantize4(v[i], amax, g);
  }
}

// quantization_error_kernel in the vector layout: a thread block per row, warp w on segments w,
// w + kWarpsPerRow, ...; each lane sums its squared errors in segment order, then block_sum.
__global__ void quantization_error_vector_kernel(const float* x, const float* y, float* e, double* row_ss,
                                                 std::int64_t cols, DeviceFormat g) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t segments = (cols + kSegment - 1) / kSegment;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* xr = x + r * cols;
  const float* yr = y ? y + r * cols : nullptr;
  float* er = e + r * cols;
  double ss = 0;
  for (std::int64_t s = warp; s < segments; s += kSegmentsPerWarp * kWarpsPerRow) {  // the same for the warp
    float4 t[kSegmentsPerWarp];
#pragma unroll
    for (int i = 0; i < kSegmentsPerWarp; ++i) {
      const std::int64_t c = (s + i * kWarpsPerRow) * kSegment + 4 * lane;
      t[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (c < cols) {
        t[i] = *reinterpret_cast<const float4*>(xr + c);
        if (yr) t[i] = sub4(t[i], *reinterpret_cast<const float4*>(yr + c));
      }
    }
#pragma unroll
    for (int i = 0; i < kSegmentsPerWarp; ++i) {
      const unsigned amax = block_amax(t[i], g);  // every lane, before any leaves
      const std::int64_t c = (s + i * kWarpsPerRow) * kSegment + 4 * lane;
      if (c >= cols) continue;
      const float4 d = sub4(quantize4(t[i], amax, g), t[i]);
      *reinterpret_cast<float4*>(er + c) = d;
      ss = __fma_rn(double(d.x), double(d.x), ss);
      ss = __fma_rn(double(d.y), double(d.y), ss);
      ss = __fma_rn(double(d.z), double(d.z), ss);
      ss = __fma_rn(double(d.w), double(d.w), ss);
    }
  }
  const double total = block_sum(ss);
  if (threadIdx.x == 0) row_ss[r] = total;
}

// The vector layout's condition: whole 16-byte groups in every row, at 16-byte aligned addresses.
bool vector_layout_fits(std::int64_t cols, std::initializer_list<const void*> pointers) {
  if (cols % 4 != 0) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  return true;
}

__global__ void sum_kernel(const double* v, std::int64_t n, double* total) {
  double s = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) s = __dadd_rn(s, v[i]);
  const double t = block_sum(s);
  if (threadIdx.x == 0) *total = t;
}

}  // namespace

void fake_quantize_device(const DeviceFormat& g, const float* in, float* out, std::int64_t rows, std::int64_t cols,
                          cudaStream_t stream, CodecKernel kernel) {
  if (rows == 0 || cols == 0) return;
  if (kernel == CodecKernel::vector && vector_layout_fits(cols, {in, out})) {
    const std::int64_t segments = (cols + kSegment - 1) / kSegment;
    const std::int64_t per_row = (segments + kSegmentsPerWarp - 1) / kSegmentsPerWarp, items = rows * per_row;
    if (items < (std::int64_t(1) << 32) - kWarpsPerRow) {
      const auto blocks = unsigned((items + kWarpsPerRow - 1) / kWarpsPerRow);
      launch_kernel(fake_quantize_vector_kernel, dim3(blocks), dim3(32 * kWarpsPerRow), stream,
                    "fake_quantize_vector_kernel", in, out, cols, unsigned(items), unsigned(per_row), g);
      return;
    }
  }
  const std::int64_t blocks_per_row = (cols + g.block - 1) / g.block;
  const std::int64_t groups = (blocks_per_row + kBlocksPerWarp - 1) / kBlocksPerWarp;
  const std::int64_t chunks = (groups + kWarpsPerRow - 1) / kWarpsPerRow;
  if (rows > 0x7FFFFFFF || chunks > 65535)
    throw Error("cuda fake_quantize: " + std::to_string(rows) + " x " + std::to_string(cols) +
                " is beyond the kernel's grid (2^31 - 1 rows, 67 million values a row)");
  launch_kernel(fake_quantize_kernel, dim3(unsigned(rows), unsigned(chunks)), dim3(32 * kWarpsPerRow), stream,
                "fake_quantize_kernel", in, out, cols, g);
}

void quantization_error_device(const DeviceFormat& g, const float* x, const float* y, float* e, double* row_ss,
                               std::int64_t rows, std::int64_t cols, cudaStream_t stream, CodecKernel kernel) {
  if (rows == 0) return;
  if (kernel == CodecKernel::vector && vector_layout_fits(cols, {x, y, e})) {
    launch_kernel(quantization_error_vector_kernel, dim3(unsigned(rows)), dim3(32 * kWarpsPerRow), stream,
                  "quantization_error_vector_kernel", x, y, e, row_ss, cols, g);
    return;
  }
  launch_kernel(quantization_error_kernel, dim3(unsigned(rows)), dim3(32 * kWarpsPerRow), stream,
                "quantization_error_kernel", x, y, e, row_ss, cols, g);
}

void sum_device(const double* v, std::int64_t n, double* total, cudaStream_t stream) {
  launch_kernel(sum_kernel, dim3(1), dim3(256), stream, "sum_kernel", v, n, total);
}

}  // namespace LORAQ_CUDA_DEVICE_NS
