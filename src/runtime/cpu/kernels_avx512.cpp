// The integer kernels with AVX-512 VNNI (compiled with -mavx512f/bw/vl/vnni; called only after the
// run-time CPU check). Everything but avx512_kernels() has internal linkage, for the reason
// src/core/simd/README.md gives.
//
// One call covers two panels (16 rows: one int32 lane per row) for up to 8 tokens. The weight
// panels keep the AVX2 layout (kernel_layout.hpp): the two panels' 32-byte vectors are loaded
// into the halves of one register. vpdpbusd multiplies unsigned by signed bytes and adds each
// group of 4 products into its row's int32 lane in one instruction, with the token's 4 activation
// codes broadcast from memory:
//   4-bit weights are stored +8 (unsigned nibbles): the sum is off by 8 x (sum of the codes),
//     which the activation rows carry (sums8);
//   8-bit weights are signed: flipping their top bit makes them unsigned (w + 128), and the sum is
//     off by 128 x (sum of the codes) = 16 x sums8.
// Either way the per-chunk int32 sum is exact, so each goes into the fp32 accumulator with the same
// fused multiply-add as the scalar and AVX2 kernels: the three give the same bits.
#include <immintrin.h>

#include <cstring>

#include "runtime/cpu/kernel_layout.hpp"

namespace {

using loraq::runtime::ActivationTile;
using loraq::runtime::kChunk;
using loraq::runtime::kPanel;

constexpr int kRows = 2 * kPanel;

inline __m512i broadcast4(const std::int8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Panel p's 32 bytes at `first` and panel p + 1's at first + stride, as one register.
inline __m512i load_pair(const std::uint8_t* first, std::int64_t stride) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first));
  const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + stride));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

inline __m512 load_pair(const float* first, std::int64_t stride) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(first)), _mm256_loadu_ps(first + stride), 1);
}

// The chunk's int32 sums minus their offset, scaled into y: the fp32 part, the same in every kernel.
template <int T>
inline void add_chunk(const __m512i (&sums)[T], const ActivationTile& a, std::int64_t c, int offset_shift,
                      const __m512 row_scales, __m512 (&y)[T]) {
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    const __m512i sum = _mm512_sub_epi32(sums[t], _mm512_set1_epi32(a.sums8[t * a.chunk_stride + c] << offset_shift));
    const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(a.scales[t * a.chunk_stride + c]), row_scales);
    y[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, y[t]);
  }
}

template <int T>
void panel_w4(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a, float* acc) {
  const std::int64_t code_stride = chunks * 128, scale_stride = chunks * kPanel;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 y[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) y[t] = _mm512_setzero_ps();
  for (std::int64_t c = 0; c < chunks; ++c) {
    __m512i sums[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) sums[t] = _mm512_setzero_si512();
    #pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const __m512i k = load_pair(codes + c * 128 + v * 32, code_stride);
      const __m512i lo = _mm512_and_si512(k, low4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(k, 4), low4);
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const std::int8_t* x = a.codes + t * a.code_stride + c * kChunk + 8 * v;
        sums[t] = _mm512_dpbusd_epi32(sums[t], lo, broadcast4(x));
        sums[t] = _mm512_dpbusd_epi32(sums[t], hi, broadcast4(x + 4));
      }
    }
    add_chunk<T>(sums, a, c, 0, load_pair(scales + c * kPanel, scale_stride), y);
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(acc + t * kRows, y[t]);
}

template <int T>
void panel_w8(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a, float* acc) {
  const std::int64_t code_stride = chunks * 256, scale_stride = chunks * kPanel;
  const __m512i top_bit = _mm512_set1_epi8(std::int8_t(0x80));
  __m512 y[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) y[t] = _mm512_setzero_ps();
  for (std::int64_t c = 0; c < chunks; ++c) {
    __m512i sums[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) sums[t] = _mm512_setzero_si512();
    #pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      const __m512i k = _mm512_xor_si512(load_pair(codes + c * 256 + g * 32, code_stride), top_bit);
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t)
        sums[t] = _mm512_dpbusd_epi32(sums[t], k, broadcast4(a.codes + t * a.code_stride + c * kChunk + 4 * g));
    }
    add_chunk<T>(sums, a, c, 4, load_pair(scales + c * kPanel, scale_stride), y);
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(acc + t * kRows, y[t]);
}

// Two chains per token (even and odd j): 16 independent fused multiply-adds at 8 tokens; the 16
// rows' up values are one load per j for all tokens.
template <int T>
void epilogue_t(const float* acc, const float* t_rows, std::int64_t t_stride, const float* up, std::int64_t up_stride,
                std::int64_t rank, const float* bias, float* out) {
  __m512 even[T], odd[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    even[t] = _mm512_loadu_ps(acc + t * kRows);
    odd[t] = _mm512_setzero_ps();
  }
  std::int64_t j = 0;
  for (; j + 1 < rank; j += 2) {
    const __m512 u0 = _mm512_loadu_ps(up + j * up_stride), u1 = _mm512_loadu_ps(up + (j + 1) * up_stride);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      even[t] = _mm512_fmadd_ps(_mm512_set1_ps(t_rows[t * t_stride + j]), u0, even[t]);
      odd[t] = _mm512_fmadd_ps(_mm512_set1_ps(t_rows[t * t_stride + j + 1]), u1, odd[t]);
    }
  }
  if (j < rank) {  // an odd rank: its last term goes into the even chain
    const __m512 u0 = _mm512_loadu_ps(up + j * up_stride);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) even[t] = _mm512_fmadd_ps(_mm512_set1_ps(t_rows[t * t_stride + j]), u0, even[t]);
  }
  const __m512 b = _mm512_loadu_ps(bias);
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + t * kRows, _mm512_add_ps(_mm512_add_ps(even[t], odd[t]), b));
}

#define LORAQ_TOKEN_CASES(CALL) \
  switch (tokens) {             \
    case 1: return CALL(1);     \
    case 2: return CALL(2);     \
    case 3: return CALL(3);     \
    case 4: return CALL(4);     \
    case 5: return CALL(5);     \
    case 6: return CALL(6);     \
    case 7: return CALL(7);     \
    default: return CALL(8);    \
  }

void panel_w4_any(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a, int tokens, float* acc) {
#define LORAQ_CALL(T) panel_w4<T>(codes, scales, chunks, a, acc)
  LORAQ_TOKEN_CASES(LORAQ_CALL)
#undef LORAQ_CALL
}

void panel_w8_any(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a, int tokens, float* acc) {
#define LORAQ_CALL(T) panel_w8<T>(codes, scales, chunks, a, acc)
  LORAQ_TOKEN_CASES(LORAQ_CALL)
#undef LORAQ_CALL
}

void epilogue(const float* acc, const float* t_rows, std::int64_t t_stride, const float* up, std::int64_t up_stride,
              std::int64_t rank, const float* bias, int tokens, float* out) {
#define LORAQ_CALL(T) epilogue_t<T>(acc, t_rows, t_stride, up, up_stride, rank, bias, out)
  LORAQ_TOKEN_CASES(LORAQ_CALL)
#undef LORAQ_CALL
}
#undef LORAQ_TOKEN_CASES

}  // namespace

namespace loraq::runtime {

const KernelSet& avx512_kernels() {
  static const KernelSet set{"avx512-vnni", 2, 8, panel_w4_any, panel_w8_any, epilogue, &avx2_kernels()};
  return set;
}

}  // namespace loraq::runtime
