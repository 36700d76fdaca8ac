// Which variant of a CUDA kernel runs, where a faster one was written without a GPU to run it on and
// stays opt-in until a GPU session has timed it (docs/cuda.md; its bits are checked on the CPU by the
// SIMT emulation, tests/cpp/test_cuda_emulated.cpp). Plain C++, so that tests and benchmarks can name
// one without CUDA headers, and the parsing is tested everywhere.
#pragma once

namespace loraq::cuda {

// Fake quantization and the fused quantization error (src/cuda/quant_kernels.cu):
// warp: one warp per block (or group of blocks) of a row, 4-byte loads per lane; measured on an
//   H200 at 0.46-0.66 of a device-to-device copy (docs/performance.md).
// vector: 16-byte loads, a warp over 128 contiguous values and each block's amax reduced over its
//   8 or 16 lanes; rows need cols % 4 == 0 and 16-byte alignment (otherwise warp runs). The same
//   per-value code as warp, so the same bits by construction.
enum class CodecKernel { warp, vector };

// The int8 GEMMs of cuda::LinearKernel (src/cuda/linear_cuda.cu):
// simple: one 32-value chunk staged at a time, two barriers a chunk, the epilogue's T and
//   up-projection read from global memory; measured on an H200 at 8-20x slower than cuBLAS BF16.
// pipelined: 4 chunks a stage copied by cp.async, double-buffered with the next stage in flight,
//   fragments by ldmatrix, the epilogue from shared memory, and the branch's down-projection in the
//   residual's launch (fused_linear_kernel). The same operations in the same order per output, so
//   the same bits; not yet timed on a GPU.
enum class LinearVariant { simple, pipelined };

// The variant a value of LORAQ_CUDA_CODEC or LORAQ_CUDA_LINEAR names (null, the variable unset: the
// measured default, warp or simple); any other value throws Error naming the variable.
CodecKernel codec_kernel_named(const char* value);
LinearVariant linear_variant_named(const char* value);

// codec_kernel_named(getenv("LORAQ_CUDA_CODEC")), read once.
CodecKernel default_codec_kernel();
// linear_variant_named(getenv("LORAQ_CUDA_LINEAR")), read at each call (each LinearKernel reads it
// when it is made).
LinearVariant default_linear_variant();

}  // namespace loraq::cuda
