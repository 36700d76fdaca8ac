// The backend's quantization kernels, launched on a stream over device memory: plain fake
// quantization, and the fused quantization error that LoRaQ's objectives are made of.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernel_variants.hpp"
#include "cuda/device_codec.cuh"

namespace loraq::cuda::detail {

// out = Q(in), [rows, cols] row-major, blocks along rows (may alias).
void fake_quantize_device(const DeviceFormat& g, const float* in, float* out, std::int64_t rows, std::int64_t cols,
                          cudaStream_t stream, CodecKernel kernel = default_codec_kernel());

// With t = x - y (t = x when y is null): e = Q(t) - t, and row_ss[r] = sum over row r of e^2 in double,
// each row summed in a fixed order (the same bits on every run). e may alias y or x. This is eq. 4's
// E = Q1(W - B) + B - W in one pass over W and B, and eq. 7's Q2(A) - A.
void quantization_error_device(const DeviceFormat& g, const float* x, const float* y, float* e, double* row_ss,
                               std::int64_t rows, std::int64_t cols, cudaStream_t stream,
                               CodecKernel kernel = default_codec_kernel());

// total[0] = the sum of v[0..n) in double, in a fixed order.
void sum_device(const double* v, std::int64_t n, double* total, cudaStream_t stream);

}  // namespace loraq::cuda::detail
