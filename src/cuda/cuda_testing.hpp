// Single kernels of the CUDA backend from host buffers, on GPU 0, for tests/cpp/test_cuda.cpp (each
// is checked bit for bit against the CPU code it mirrors) and timings for bench/bench_cuda.cpp. Not
// part of the public interface.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "cuda/kernel_variants.hpp"
#include "loraq/cuda.hpp"
#include "loraq/format.hpp"

namespace loraq::cuda::testing {

// out = Q(in) on the given kernel (cuda::fake_quantize runs the default one).
void fake_quantize(Format f, Rounding rounding, std::span<const float> in, std::span<float> out, std::int64_t rows,
                   std::int64_t cols, CodecKernel kernel);

// e = Q(x - y) - (x - y) (loraq_objectives.cpp's E), and each row's sum of e^2.
std::vector<double> quantization_error(Format f, Rounding rounding, std::span<const float> x, std::span<const float> y,
                                       std::span<float> e, std::int64_t rows, std::int64_t cols, CodecKernel kernel);

// `steps` Adam updates of x with the same gradient g each time (methods/adam.hpp's update).
void adam_steps(std::span<float> x, std::span<const float> g, double lr, int steps);

// Median seconds per call over `repeats` (CUDA events, device-resident data): fake quantization of a
// [rows, cols] fp32 matrix, and the anchor, a device-to-device copy of the same bytes.
struct DeviceTimes {
  double op = 0, anchor = 0;
};
DeviceTimes time_fake_quantize(Format f, std::int64_t rows, std::int64_t cols, int repeats, CodecKernel kernel);

// kernel.forward_device on x copied to the kernel's GPU, on a stream of its own, the result copied
// back: what loraq.torch does with tensors already on the GPU, from host buffers.
std::vector<float> forward_through_device_memory(const LinearKernel& kernel, std::span<const float> x,
                                                 std::int64_t rows, std::int64_t out, bool skip_branch);

// Median seconds of the three rank-r GEMMs of one eq. 4 step (B = up down, grad_up, grad_down).
double time_step_gemms(std::int64_t out, std::int64_t in, std::int64_t rank, int repeats);

}  // namespace loraq::cuda::testing
