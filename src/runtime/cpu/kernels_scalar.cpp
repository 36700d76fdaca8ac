// The integer kernels in plain C++: the reference every vector kernel set must match bit for bit (the
// same exact int32 chunk sums, and the same fp32 operations in the same order).
#include <cmath>

#include "runtime/cpu/kernel_layout.hpp"

namespace loraq::runtime {
namespace {

void panel_w4(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a, int tokens,
              float* acc) {
  for (int t = 0; t < tokens; ++t) {
    for (int r = 0; r < kPanel; ++r) {
      float y = 0.0f;
      for (std::int64_t c = 0; c < chunks; ++c) {
        const std::uint8_t* k = codes + c * kPairChunk4;
        const std::int8_t* x = a.codes + c * a.code_chunk_stride + t * kChunk;
        std::int32_t sum = 0;
        for (int v = 0; v < 4; ++v)
          for (int j = 0; j < 4; ++j) {
            const int byte = k[v * kPairVector + 4 * r + j];
            sum += ((byte & 15) - 8) * x[8 * v + j] + ((byte >> 4) - 8) * x[8 * v + 4 + j];
          }
        y = std::fma(float(sum), a.scales[c * a.chunk_stride + t] * scales[c * kPairScales + r], y);
      }
      acc[t * kPanel + r] = y;
    }
  }
}

void panel_w8(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a, int tokens,
              float* acc) {
  for (int t = 0; t < tokens; ++t) {
    for (int r = 0; r < kPanel; ++r) {
      float y = 0.0f;
      for (std::int64_t c = 0; c < chunks; ++c) {
        const std::uint8_t* k = codes + c * kPairChunk8;
        const std::int8_t* x = a.codes + c * a.code_chunk_stride + t * kChunk;
        std::int32_t sum = 0;
        for (int g = 0; g < 8; ++g)
          for (int j = 0; j < 4; ++j) sum += std::int8_t(k[g * kPairVector + 4 * r + j]) * x[4 * g + j];
        y = std::fma(float(sum), a.scales[c * a.chunk_stride + t] * scales[c * kPairScales + r], y);
      }
      acc[t * kPanel + r] = y;
    }
  }
}

void epilogue(const float* acc, const float* t_rows, std::int64_t t_stride, const float* up, std::int64_t up_stride,
              std::int64_t rank, const float* bias, int tokens, float* out, std::int64_t out_stride) {
  for (int t = 0; t < tokens; ++t)
    for (int r = 0; r < kPanel; ++r) {
      // Two chains, even and odd j, so that vector code can overlap them.
      float even = acc[t * kPanel + r], odd = 0.0f;
      for (std::int64_t j = 0; j < rank; ++j) {
        float& chain = j % 2 ? odd : even;
        chain = std::fma(t_rows[j * t_stride + t], up[j * up_stride + r], chain);
      }
      out[t * out_stride + r] = (even + odd) + bias[r];
    }
}

}  // namespace

const KernelSet& scalar_kernels() {
  static_assert(kTokenGroup % 4 == 0, "a tile must not span two token groups");
  static const KernelSet set{"scalar", 1, 4, panel_w4, panel_w8, epilogue, &set};
  return set;
}

}  // namespace loraq::runtime
