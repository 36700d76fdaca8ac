// LORAQ_CUDA_CODEC (codec_kernel.hpp). Plain C++, in the CUDA and the CUDA-less build alike, so the
// parsing is tested on machines without a GPU.
#include "cuda/codec_kernel.hpp"

#include <cstdlib>
#include <string>

#include "loraq/error.hpp"

namespace loraq::cuda {

CodecKernel codec_kernel_named(const char* value) {
  if (value == nullptr || std::string(value) == "warp") return CodecKernel::warp;
  if (std::string(value) == "vector") return CodecKernel::vector;
  throw Error("LORAQ_CUDA_CODEC=" + std::string(value) + ": expected warp or vector");
}

CodecKernel default_codec_kernel() {
  static const CodecKernel kernel = codec_kernel_named(std::getenv("LORAQ_CUDA_CODEC"));
  return kernel;
}

}  // namespace loraq::cuda
