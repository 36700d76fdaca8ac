// MX fake quantization on the GPU: one warp per block of 32 values, one value per thread.
//
// The arithmetic is that of src/core/simd/codec_kernels.hpp (the magic-sum rounding, read in its
// header comment), written with explicit _rn intrinsics so that nvcc cannot contract or reorder it:
// results are bit-identical to the CPU reference, which tests/cpp/test_cuda.cpp checks on a GPU.
#include <cuda_runtime.h>

#include <string>

#include "loraq/cuda.hpp"
#include "loraq/error.hpp"

namespace loraq::cuda {
namespace {

struct DeviceGrid {
  int man_bits, emin_field, bias, bits, emax;
  float max_value;
  bool is_int;
};

bool grid_of(Format f, DeviceGrid& g) {
  switch (f) {
    case Format::mxfp8_e4m3: g = {3, 121, 7, 8, 8, 448.0f, false}; return true;
    case Format::mxfp8_e5m2: g = {2, 113, 15, 8, 15, 57344.0f, false}; return true;
    case Format::mxfp6_e2m3: g = {3, 127, 1, 6, 2, 7.5f, false}; return true;
    case Format::mxfp6_e3m2: g = {2, 125, 3, 6, 4, 28.0f, false}; return true;
    case Format::mxfp4: g = {1, 127, 1, 4, 2, 6.0f, false}; return true;
    case Format::mxint8: g = {7, 128, 0, 8, 0, 127.0f / 64.0f, true}; return true;
    case Format::mxint4: g = {3, 128, 0, 4, 0, 7.0f / 4.0f, true}; return true;
    case Format::sint4: return false;
    case Format::nvfp4: return false;
    case Format::int8_channel: return false;
    case Format::fp16: return false;
    case Format::bf16: return false;
  }
  return false;
}

__device__ float power_of_two(int e) {  // e in [-127, 127]
  return e == -127 ? __uint_as_float(0x00400000u) : __uint_as_float(static_cast<unsigned>(127 + e) << 23);
}

__device__ int floor_log2(float a) {
  const unsigned bits = __float_as_uint(a) & 0x7FFFFFFFu;
  const int field = static_cast<int>(bits >> 23);
  if (field != 0) return field - 127;
  return -149 + (31 - __clz(static_cast<int>(bits & 0x7FFFFFu)));
}

__device__ float round_to_grid(float a, const DeviceGrid& g, bool away) {
  a = fminf(a, 2.0f * g.max_value);
  const int exponent = max(static_cast<int>(__float_as_uint(a) >> 23), g.emin_field);
  const float magic = __uint_as_float(static_cast<unsigned>(exponent + 23 - g.man_bits) << 23);
  float r = __fsub_rn(__fadd_rn(a, magic), magic);
  if (away) {
    const float half = __uint_as_float(static_cast<unsigned>(exponent - g.man_bits - 1) << 23);
    if (__fsub_rn(a, r) == half) r = __fadd_rn(r, __fadd_rn(half, half));
  }
  return fminf(r, g.max_value);
}

__global__ void mx_fake_quantize(const float* in, float* out, long long rows, long long cols, DeviceGrid g, bool away) {
  const long long blocks_per_row = (cols + 31) / 32;
  const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= rows * blocks_per_row) return;  // whole warps leave together
  const long long row = warp / blocks_per_row;
  const long long col = (warp % blocks_per_row) * 32 + lane;
  const bool inside = col < cols;
  const float x = inside ? in[row * cols + col] : 0.0f;
  const unsigned amax_bits = __reduce_max_sync(0xFFFFFFFFu, __float_as_uint(x) & 0x7FFFFFFFu);
  float value;
  if (amax_bits >= 0x7F800000u) {
    value = __uint_as_float(0x7FC00000u);  // NaN or Inf in the block: the NaN scale
  } else if (amax_bits == 0) {
    value = 0.0f;
  } else {
    const int shared_exp = min(max(floor_log2(__uint_as_float(amax_bits)) - g.emax, -127), 127);
    const float t = __fmul_rn(x, power_of_two(-shared_exp));
    const unsigned sign = __float_as_uint(t) & 0x80000000u;
    const float r = round_to_grid(fabsf(t), g, away);
    float v = __uint_as_float(__float_as_uint(r) | sign);
    if (g.is_int) v = __fadd_rn(v, 0.0f);  // integer code 0 decodes to +0
    value = __fmul_rn(v, power_of_two(shared_exp));
  }
  if (inside) out[row * cols + col] = value;
}

void check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw Error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(rc));
}

}  // namespace

bool supports(Format f) {
  DeviceGrid g{};
  return grid_of(f, g);
}

void fake_quantize(Format f, std::span<const float> in, std::span<float> out, std::int64_t rows, std::int64_t cols,
                   Rounding rounding) {
  DeviceGrid g{};
  if (!grid_of(f, g))
    throw Error("the CUDA codec covers the MX formats; " + std::string(format_info(f).name) + " runs on the CPU");
  if (device_count() == 0) throw Error("no CUDA GPU is visible (cudaGetDeviceCount returned 0)");
  const auto n = static_cast<std::size_t>(rows * cols);
  if (in.size() < n || out.size() < n) throw Error("cuda::fake_quantize: buffers smaller than rows x cols");
  if (n == 0) return;
  float *d_in = nullptr, *d_out = nullptr;
  check(cudaMalloc(&d_in, n * sizeof(float)), "cudaMalloc");
  check(cudaMalloc(&d_out, n * sizeof(float)), "cudaMalloc");
  try {
    check(cudaMemcpy(d_in, in.data(), n * sizeof(float), cudaMemcpyHostToDevice), "copy to device");
    const long long warps = rows * ((cols + 31) / 32);
    const int threads = 256;
    const long long grid = (warps * 32 + threads - 1) / threads;
    mx_fake_quantize<<<static_cast<unsigned>(grid), threads>>>(d_in, d_out, rows, cols, g,
                                                               rounding == Rounding::nearest_away);
    check(cudaGetLastError(), "kernel launch");
    check(cudaMemcpy(out.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost), "copy to host");
  } catch (...) {
    cudaFree(d_in);
    cudaFree(d_out);
    throw;
  }
  cudaFree(d_in);
  cudaFree(d_out);
}

}  // namespace loraq::cuda
