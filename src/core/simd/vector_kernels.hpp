// The vectorized codecs' entry points, one table per instruction set.
//
// A kernel handles one row; the dispatcher (codec_dispatch.cpp) spreads rows over threads and falls
// back to the scalar reference for formats a table does not cover. Every kernel is bit-identical to
// block_reference.cpp (tests/cpp/test_simd.cpp checks it on every size class).
#pragma once

#include <cstdint>

#include "loraq/format.hpp"

namespace loraq::detail {

struct VectorKernels {
  bool (*supports)(Format f);
  // out = fake-quantized row (may alias in). stream: write with non-temporal stores (large outputs
  // that will not be read back from cache soon); used only where out is vector-aligned. A thread
  // that streamed calls stream_fence once after its last row, before other threads read its rows.
  void (*fake_quantize_row)(Format f, const float* in, float* out, std::int64_t cols, float tensor_scale,
                            Rounding rounding, bool stream);
  void (*stream_fence)();
  // Packed codes (packed_row_bytes) and scale bytes (blocks_per_row * scale_bytes) of one row.
  void (*pack_row)(Format f, const float* in, std::int64_t cols, float tensor_scale, Rounding rounding,
                   std::uint8_t* codes, std::uint8_t* scales);
  // Largest magnitude over the finite values (0 if none): nvfp4's tensor amax.
  float (*finite_amax)(const float* values, std::int64_t n);
};

// nullptr when the build lacks that instruction set.
const VectorKernels* avx2_kernels();
const VectorKernels* avx512_kernels();

}  // namespace loraq::detail
