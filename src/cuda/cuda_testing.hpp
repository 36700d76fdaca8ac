// Single kernels of the CUDA backend from host buffers, on GPU 0, for tests/cpp/test_cuda.cpp: each
// is checked bit for bit against the CPU code it mirrors. Not part of the public interface.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "loraq/format.hpp"

namespace loraq::cuda::testing {

// e = Q(x - y) - (x - y) (loraq_objectives.cpp's E), and each row's sum of e^2.
std::vector<double> quantization_error(Format f, Rounding rounding, std::span<const float> x, std::span<const float> y,
                                       std::span<float> e, std::int64_t rows, std::int64_t cols);

// `steps` Adam updates of x with the same gradient g each time (methods/adam.hpp's update).
void adam_steps(std::span<float> x, std::span<const float> g, double lr, int steps);

}  // namespace loraq::cuda::testing
