// LORAQ_CUDA_CODEC and LORAQ_CUDA_LINEAR (kernel_variants.hpp). Plain C++, in the CUDA and the
// CUDA-less build alike, so the parsing is tested on machines without a GPU.
#include "cuda/kernel_variants.hpp"

#include <cstdlib>
#include <string>

#include "loraq/error.hpp"

namespace loraq::cuda {
namespace {

[[noreturn]] void unknown(const char* variable, const char* value, const char* expected) {
  throw Error(std::string(variable) + "=" + value + ": expected " + expected);
}

}  // namespace

CodecKernel codec_kernel_named(const char* value) {
  if (value == nullptr || std::string(value) == "warp") return CodecKernel::warp;
  if (std::string(value) == "vector") return CodecKernel::vector;
  unknown("LORAQ_CUDA_CODEC", value, "warp or vector");
}

LinearVariant linear_variant_named(const char* value) {
  if (value == nullptr || std::string(value) == "simple") return LinearVariant::simple;
  if (std::string(value) == "pipelined") return LinearVariant::pipelined;
  unknown("LORAQ_CUDA_LINEAR", value, "simple or pipelined");
}

CodecKernel default_codec_kernel() {
  static const CodecKernel kernel = codec_kernel_named(std::getenv("LORAQ_CUDA_CODEC"));
  return kernel;
}

LinearVariant default_linear_variant() { return linear_variant_named(std::getenv("LORAQ_CUDA_LINEAR")); }

}  // namespace loraq::cuda
