// Fake quantization on the GPU from host buffers: the public entry point of the device codecs
// (device_codec.cuh), bit-identical to the CPU reference, which tests/cpp/test_cuda.cpp checks.
#include <string>

#include "cuda/cuda_support.cuh"
#include "cuda/quant_kernels.cuh"
#include "loraq/cuda.hpp"

namespace loraq::cuda {

bool supports(Format f) {
  detail::DeviceFormat g;
  return detail::device_format(f, Rounding::nearest_even, g);
}

void fake_quantize(Format f, std::span<const float> in, std::span<float> out, std::int64_t rows, std::int64_t cols,
                   Rounding rounding) {
  detail::DeviceFormat g;
  if (!detail::device_format(f, rounding, g))
    throw Error("the CUDA codec covers the MX formats and sint4; " + std::string(format_info(f).name) +
                " runs on the CPU");
  if (device_count() == 0) throw Error("no CUDA GPU is visible (cudaGetDeviceCount returned 0)");
  const auto n = static_cast<std::size_t>(rows * cols);
  if (in.size() < n || out.size() < n) throw Error("cuda::fake_quantize: buffers smaller than rows x cols");
  if (n == 0) return;
  detail::Session session(0);
  detail::DeviceBuffer<float> d_in(n), d_out(n);
  d_in.upload(in.data(), session.stream());
  detail::fake_quantize_device(g, d_in.get(), d_out.get(), rows, cols, session.stream());
  d_out.download(out.data(), session.stream());
  session.sync();
}

}  // namespace loraq::cuda
