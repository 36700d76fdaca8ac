// The integer kernels with AVX-VNNI, the VEX-encoded 256-bit vpdpbusd of CPUs that have it without
// AVX-512 (Alder Lake and later Intel client cores, Sierra Forest; compiled with -mavx2 -mavxvnni,
// called only after the run-time CPU check). Everything but avx_vnni_kernels() has internal
// linkage, for the reason src/core/simd/README.md gives.
//
// The AVX2 kernels' panels and tiles (8 rows x up to 4 tokens: VEX has 16 registers), with
// vpdpbusd in place of vpmaddubsw + vpaddw + vpmaddwd, and the AVX-512 kernels' offsets: 4-bit
// weights stay +8 (corrected by sums8), 8-bit weights get their top bit flipped (w + 128, corrected
// by 16 x sums8). The exact int32 chunk sums then take the same fp32 steps as every other kernel set.
#include <immintrin.h>

#include <cstring>

#include "runtime/cpu/kernel_layout.hpp"

namespace {

using loraq::runtime::ActivationTile;
using loraq::runtime::kChunk;
using loraq::runtime::kPanel;

inline __m256i broadcast4(const std::int8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

template <int T>
inline void add_chunk(const __m256i (&sums)[T], const ActivationTile& a, std::int64_t c, int offset_shift,
                      const __m256 row_scales, __m256 (&y)[T]) {
  #pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    const __m256i sum = _mm256_sub_epi32(sums[t], _mm256_set1_epi32(a.sums8[t * a.chunk_stride + c] << offset_shift));
    const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(a.scales[t * a.chunk_stride + c]), row_scales);
    y[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, y[t]);
  }
}

template <int T>
void panel_w4(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a,
              float* acc) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 y[T];
  #pragma GCC unroll 4
  for (int t = 0; t < T; ++t) y[t] = _mm256_setzero_ps();
  for (std::int64_t c = 0; c < chunks; ++c) {
    __m256i sums[T];
    #pragma GCC unroll 4
    for (int t = 0; t < T; ++t) sums[t] = _mm256_setzero_si256();
    #pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + c * 128 + v * 32));
      const __m256i lo = _mm256_and_si256(k, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(k, 4), low4);
      #pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const std::int8_t* x = a.codes + t * a.code_stride + c * kChunk + 8 * v;
        sums[t] = _mm256_dpbusd_avx_epi32(sums[t], lo, broadcast4(x));
        sums[t] = _mm256_dpbusd_avx_epi32(sums[t], hi, broadcast4(x + 4));
      }
    }
    add_chunk<T>(sums, a, c, 0, _mm256_loadu_ps(scales + c * kPanel), y);
  }
  #pragma GCC unroll 4
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(acc + t * kPanel, y[t]);
}

template <int T>
void panel_w8(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a,
              float* acc) {
  const __m256i top_bit = _mm256_set1_epi8(std::int8_t(0x80));
  __m256 y[T];
  #pragma GCC unroll 4
  for (int t = 0; t < T; ++t) y[t] = _mm256_setzero_ps();
  for (std::int64_t c = 0; c < chunks; ++c) {
    __m256i sums[T];
    #pragma GCC unroll 4
    for (int t = 0; t < T; ++t) sums[t] = _mm256_setzero_si256();
    #pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      const __m256i k = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + c * 256 + g * 32)), top_bit);
      #pragma GCC unroll 4
      for (int t = 0; t < T; ++t)
        sums[t] = _mm256_dpbusd_avx_epi32(sums[t], k, broadcast4(a.codes + t * a.code_stride + c * kChunk + 4 * g));
    }
    add_chunk<T>(sums, a, c, 4, _mm256_loadu_ps(scales + c * kPanel), y);
  }
  #pragma GCC unroll 4
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(acc + t * kPanel, y[t]);
}

#define LORAQ_TOKEN_DISPATCH(NAME)                                                                  \
  void NAME##_any(const std::uint8_t* codes, const float* scales, std::int64_t chunks,              \
                  const ActivationTile& a, int tokens, float* acc) {                                \
    switch (tokens) {                                                                               \
      case 1: return NAME<1>(codes, scales, chunks, a, acc);                                        \
      case 2: return NAME<2>(codes, scales, chunks, a, acc);                                        \
      case 3: return NAME<3>(codes, scales, chunks, a, acc);                                        \
      default: return NAME<4>(codes, scales, chunks, a, acc);                                       \
    }                                                                                               \
  }
LORAQ_TOKEN_DISPATCH(panel_w4)
LORAQ_TOKEN_DISPATCH(panel_w8)
#undef LORAQ_TOKEN_DISPATCH

}  // namespace

namespace loraq::runtime {

// The fp32 epilogue has nothing to gain from VNNI: it is the AVX2 one.
const KernelSet& avx_vnni_kernels() {
  static const KernelSet set{"avx-vnni", 1, 4, panel_w4_any, panel_w8_any, avx2_kernels().epilogue, &set};
  return set;
}

}  // namespace loraq::runtime
