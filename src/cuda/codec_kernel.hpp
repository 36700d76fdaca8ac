// Which device kernels fake-quantize and compute quantization errors (src/cuda/quant_kernels.cu).
// Plain C++, so that tests and benchmarks can name one without CUDA headers.
#pragma once

namespace loraq::cuda {

// warp: one warp per block (or group of blocks) of a row, 4-byte loads per lane; measured on an
//   H200 at 0.46-0.66 of a device-to-device copy (docs/performance.md).
// vector: 16-byte loads, a warp over 128 contiguous values and each block's amax reduced over its
//   8 or 16 lanes; rows need cols % 4 == 0 and 16-byte alignment (otherwise warp runs). Written
//   without a GPU (2026-12-07): bit for bit the same by construction (the same per-value code),
//   checked by tests/cpp/test_cuda.cpp on the first GPU run, and measured by bench_cuda beside warp.
//   It becomes the default once it has run there.
enum class CodecKernel { warp, vector };

// The layout a value of LORAQ_CUDA_CODEC names: warp (also for null, the variable unset) or vector;
// any other value throws Error naming the variable.
CodecKernel codec_kernel_named(const char* value);

// codec_kernel_named(getenv("LORAQ_CUDA_CODEC")), read once.
CodecKernel default_codec_kernel();

}  // namespace loraq::cuda
