// The integer kernels with AVX2 (compiled with -mavx2 -mfma; called only after the run-time CPU
// check). Everything but avx2_kernels() has internal linkage, for the reason src/core/simd/README.md
// gives.
//
// One chunk of 32 values for a tile of up to 6 tokens against a panel of 8 rows: each group of 4
// activation codes is broadcast to the 8 rows' lanes and vpmaddubsw multiplies it with the rows'
// codes; vpmaddwd by ones then sums each row's 4 products into its own int32 lane. The per-chunk
// int32 sums are exact, and each goes into the fp32 accumulator with one fused multiply-add by
// (activation scale x row scale), the same operations as the scalar kernels.
#include <immintrin.h>

#include <cstring>

#include "runtime/cpu/kernel_layout.hpp"
#include "runtime/cpu/token_dispatch.hpp"

namespace {

using loraq::runtime::ActivationTile;
using loraq::runtime::kChunk;
using loraq::runtime::kPairChunk4;
using loraq::runtime::kPairChunk8;
using loraq::runtime::kPairScales;
using loraq::runtime::kPairVector;
using loraq::runtime::kPanel;

// Tokens per call. On Zen 3 (AVX2 only; bench_linear, 2026-12-07) 6 tokens against 4, with the
// peeled first add of panel_w4, took W4A8 with the branch from 1.27-1.65x SGEMM to 1.44-1.90x at
// five of six (layer, M) pairs: the nibble unpacking and weight loads are shared
// by more tokens, and the epilogue runs 12 independent chains. 6 accumulators and 6 int16 sums take
// 12 of the 16 registers (GCC already keeps some accumulators on the stack between chunks). A tile
// must divide kTokenGroup (12), and 12 tokens would need 24.
constexpr int kTile = 6;

inline __m256i broadcast4(const std::int8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// 4-bit weights stored +8 (unsigned nibbles) against signed activation codes. vpmaddubsw's pairs stay
// within 2 x 15 x 127 = 3810, so the 8 groups of a chunk add up in int16 (at most 30480) before
// one vpmaddwd widens them.
template <int T>
void panel_w4(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a,
              float* acc) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 y[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) y[t] = _mm256_setzero_ps();
  for (std::int64_t c = 0; c < chunks; ++c) {
    // Token t's products of the chunk's vector v (low nibbles against codes 8v..8v+3, high ones
    // against 8v+4..8v+7), as int16 pairs.
    const std::uint8_t* chunk_codes = codes + c * kPairChunk4;
    const std::int8_t* x = a.codes + c * a.code_chunk_stride;
    auto products = [&](const __m256i& lo, const __m256i& hi, int t, int v) {
      const std::int8_t* xt = x + t * kChunk + 8 * v;
      return _mm256_add_epi16(_mm256_maddubs_epi16(lo, broadcast4(xt)), _mm256_maddubs_epi16(hi, broadcast4(xt + 4)));
    };
    auto nibbles = [&](int v, __m256i& lo, __m256i& hi) {
      const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk_codes + v * kPairVector));
      lo = _mm256_and_si256(k, low4);
      hi = _mm256_and_si256(_mm256_srli_epi16(k, 4), low4);
    };
    // Vector 0 starts the sums, not an add to zero: measured on Zen 3, vpmaddubsw and vpaddw
    // together issue at about 3 a cycle, so each of these adds costs about as much as a multiply.
    __m256i pairs[T], lo, hi;
    nibbles(0, lo, hi);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) pairs[t] = products(lo, hi, t, 0);
    // Not unrolled: unrolled, GCC reassociates the int16 sums and spills the products.
#pragma GCC unroll 1
    for (int v = 1; v < 4; ++v) {
      nibbles(v, lo, hi);
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) pairs[t] = _mm256_add_epi16(pairs[t], products(lo, hi, t, v));
    }
    const __m256 row_scales = _mm256_loadu_ps(scales + c * kPairScales);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(pairs[t], ones),
                                           _mm256_set1_epi32(a.offset4[c * a.chunk_stride + t]));
      const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(a.scales[c * a.chunk_stride + t]), row_scales);
      y[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, y[t]);
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(acc + t * kPanel, y[t]);
}

// 8-bit weights: |weight| x (activation with the weight's sign): the absolute weights are computed
// once per group for all the tile's tokens (an |activation| x signed-weight form needs an abs per
// token). vpmaddubsw's pairs stay within 2 x 128 x 127 = 32512 (activation codes are never -128;
// a weight code of -128 gives |w| = 128 as an unsigned byte, still exact); each group is widened to
// int32 at once.
template <int T>
void panel_w8(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a,
              float* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 y[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) y[t] = _mm256_setzero_ps();
  for (std::int64_t c = 0; c < chunks; ++c) {
    __m256i sums[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) sums[t] = _mm256_setzero_si256();
    #pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + c * kPairChunk8 + g * kPairVector));
      const __m256i k_abs = _mm256_abs_epi8(k);
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256i x = broadcast4(a.codes + c * a.code_chunk_stride + t * kChunk + 4 * g);
        const __m256i prod = _mm256_maddubs_epi16(k_abs, _mm256_sign_epi8(x, k));
        sums[t] = _mm256_add_epi32(sums[t], _mm256_madd_epi16(prod, ones));
      }
    }
    const __m256 row_scales = _mm256_loadu_ps(scales + c * kPairScales);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(a.scales[c * a.chunk_stride + t]), row_scales);
      y[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[t]), scale, y[t]);
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(acc + t * kPanel, y[t]);
}

void panel_w4_any(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a,
                  int tokens, float* acc) {
  with_tokens<kTile>(tokens, [&](auto t) { panel_w4<decltype(t)::value>(codes, scales, chunks, a, acc); });
}

void panel_w8_any(const std::uint8_t* codes, const float* scales, std::int64_t chunks, const ActivationTile& a,
                  int tokens, float* acc) {
  with_tokens<kTile>(tokens, [&](auto t) { panel_w8<decltype(t)::value>(codes, scales, chunks, a, acc); });
}

// Two chains per token (even and odd j) over the tile's tokens: 2 x T independent fused
// multiply-adds hide their latency; the up vector is loaded once for all tokens.
template <int T>
void epilogue_tile(const float* acc, const float* t_rows, std::int64_t t_stride, const float* up,
                   std::int64_t up_stride, std::int64_t rank, const float* bias, float* out, std::int64_t out_stride) {
  __m256 even[T], odd[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    even[t] = _mm256_loadu_ps(acc + t * kPanel);
    odd[t] = _mm256_setzero_ps();
  }
  std::int64_t j = 0;
  for (; j + 1 < rank; j += 2) {
    const __m256 u0 = _mm256_loadu_ps(up + j * up_stride), u1 = _mm256_loadu_ps(up + (j + 1) * up_stride);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      even[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(t_rows + j * t_stride + t), u0, even[t]);
      odd[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(t_rows + (j + 1) * t_stride + t), u1, odd[t]);
    }
  }
  const __m256 b = _mm256_loadu_ps(bias);
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    if (j < rank)  // an odd rank's last term, into the even chain
      even[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(t_rows + j * t_stride + t), _mm256_loadu_ps(up + j * up_stride),
                                even[t]);
    _mm256_storeu_ps(out + t * out_stride, _mm256_add_ps(_mm256_add_ps(even[t], odd[t]), b));
  }
}

void epilogue(const float* acc, const float* t_rows, std::int64_t t_stride, const float* up, std::int64_t up_stride,
              std::int64_t rank, const float* bias, int tokens, float* out, std::int64_t out_stride) {
  with_tokens<kTile>(tokens, [&](auto t) {
    epilogue_tile<decltype(t)::value>(acc, t_rows, t_stride, up, up_stride, rank, bias, out, out_stride);
  });
}

}  // namespace

namespace loraq::runtime {

const KernelSet& avx2_kernels() {
  static_assert(kTokenGroup % kTile == 0, "a tile must not span two token groups");
  static const KernelSet set{"avx2", 1, kTile, panel_w4_any, panel_w8_any, epilogue, &set};
  return set;
}

}  // namespace loraq::runtime
