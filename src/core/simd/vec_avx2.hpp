// 8-lane vector operations for the codec templates (AVX2 + FMA + F16C + BMI2).
// Included only by codec_avx2.cpp; everything has internal linkage (see README.md here).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace {

struct VecAvx2 {
  static constexpr int W = 8;
  using F = __m256;
  using I = __m256i;
  using M = __m256i;  // all-ones lanes where true

  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, F v) { _mm256_stream_ps(p, v); }  // p aligned to the vector
  static void fence() { _mm_sfence(); }
  static I bits(F v) { return _mm256_castps_si256(v); }
  static F flt(I v) { return _mm256_castsi256_ps(v); }
  static I set_i(std::int32_t x) { return _mm256_set1_epi32(x); }
  static F set_f(float x) { return _mm256_set1_ps(x); }

  static I and_i(I a, I b) { return _mm256_and_si256(a, b); }
  static I or_i(I a, I b) { return _mm256_or_si256(a, b); }
  static I add_i(I a, I b) { return _mm256_add_epi32(a, b); }
  static I sub_i(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I max_i(I a, I b) { return _mm256_max_epi32(a, b); }
  static I shr(I a, int n) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(n)); }
  static I shl(I a, int n) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(n)); }
  template <int N>
  static I shr_c(I a) { return _mm256_srli_epi32(a, N); }
  template <int N>
  static I shl_c(I a) { return _mm256_slli_epi32(a, N); }

  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F min_f(F a, F b) { return _mm256_min_ps(a, b); }

  static M eq_f(F a, F b) { return _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)); }
  static M gt_i(I a, I b) { return _mm256_cmpgt_epi32(a, b); }
  static I select_i(M m, I if_true, I if_false) { return _mm256_blendv_epi8(if_false, if_true, m); }
  static F select_f(M m, F if_true, F if_false) {
    return _mm256_blendv_ps(if_false, if_true, _mm256_castsi256_ps(m));
  }

  // fp16 by the F16C instructions, round to nearest even; saturating at 65504 (a >= 0, finite).
  static std::uint16_t fp16_code(float a) {
    return static_cast<std::uint16_t>(_cvtss_sh(a < 65504.0f ? a : 65504.0f, _MM_FROUND_TO_NEAREST_INT));
  }
  static float fp16_value(std::uint16_t code) { return _cvtsh_ss(code); }
  // Each lane rounded to fp16 (nearest even, IEEE: beyond 65520 gives Inf) and widened back.
  static F fp16_round(F a) { return _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }

  static I cvtt(F a) { return _mm256_cvttps_epi32(a); }
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  // MXCSR's rounding: to nearest even, which the codecs' magic sums assume as well.
  static I cvt_nearest(F a) { return _mm256_cvtps_epi32(a); }
  static I min_i(I a, I b) { return _mm256_min_epi32(a, b); }

  // a - (a rounded to the nearest integer, ties to even), exact.
  static F frac(F a) { return sub(a, _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }
  // max(|a|, |b|) for non-NaN lanes.
  static F max_abs(F a, F b) {
    const F abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    return _mm256_max_ps(_mm256_and_ps(a, abs_mask), _mm256_and_ps(b, abs_mask));
  }
  static M gt_f(F a, F b) { return _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_GT_OQ)); }
  static bool any(M m) { return !_mm256_testz_si256(m, m); }

  static std::int32_t hmax_i(I a) {
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(m);
  }

  static void store_i32(std::int32_t* p, I a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), a); }

  // Lane g = the largest lane of m[g], for W vectors at once: a transpose whose every step is a max.
  static I transpose_max(const I* m) {
    I pairs[4], quads[2];
    for (int i = 0; i < 4; ++i)  // 128-bit lane j: [m2i m2i+1 m2i m2i+1] partials
      pairs[i] = _mm256_max_epi32(_mm256_unpacklo_epi32(m[2 * i], m[2 * i + 1]),
                                  _mm256_unpackhi_epi32(m[2 * i], m[2 * i + 1]));
    for (int i = 0; i < 2; ++i)  // 128-bit lane j: [m4i .. m4i+3], one partial each
      quads[i] = _mm256_max_epi32(_mm256_unpacklo_epi64(pairs[2 * i], pairs[2 * i + 1]),
                                  _mm256_unpackhi_epi64(pairs[2 * i], pairs[2 * i + 1]));
    return _mm256_max_epi32(_mm256_permute2x128_si256(quads[0], quads[1], 0x20),
                            _mm256_permute2x128_si256(quads[0], quads[1], 0x31));
  }
  static I zero_i() { return _mm256_setzero_si256(); }
  static F zero_f() { return _mm256_setzero_ps(); }
  static M lt_f(F a, F b) { return _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
  static M and_m(M a, M b) { return _mm256_and_si256(a, b); }
  static unsigned lane_bits(M m) { return unsigned(_mm256_movemask_ps(_mm256_castsi256_ps(m))); }
  // Each lane rounded to fp16 (nearest even) and widened back; the W fp16 codes go to `codes`.
  static F fp16_round_codes(F a, std::uint16_t* codes) {
    const __m128i h = _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), h);
    return _mm256_cvtph_ps(h);
  }

  // The low byte of each lane: W bytes.
  static void store_bytes(I codes, std::uint8_t* dst) {
    const __m256i gather = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                            -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i g = _mm256_shuffle_epi8(codes, gather);
    const __m128i both = _mm_or_si128(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), both);
  }

  // K code vectors (K = 2, 4 or 8) of one block, packed: 8-bit a byte each, 4-bit two a byte (code
  // 2i in the low nibble). Lanes hold codes already masked to Bits bits.
  template <int Bits, int K>
  static void store_codes(const I* c, std::uint8_t* dst) {
    if constexpr (K == 2) {
      store_group<Bits, 16>(c[0], c[1], _mm256_setzero_si256(), _mm256_setzero_si256(), dst);
    } else {
      static_assert(K % 4 == 0);
      for (int g = 0; g < K; g += 4) store_group<Bits, 32>(c[g], c[g + 1], c[g + 2], c[g + 3], dst + g * W * Bits / 8);
    }
  }

  // N (16 or 32) codes from up to four vectors, in order.
  template <int Bits, int N>
  static void store_group(I c0, I c1, I c2, I c3, std::uint8_t* dst) {
    const __m256i words = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
    const __m256i bytes = _mm256_permutevar8x32_epi32(words, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    if constexpr (Bits == 8) {
      if constexpr (N == 32) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bytes);
      else _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(bytes));
    } else {
      static_assert(Bits == 4);
      const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x1001));  // c[2i] + 16 c[2i+1]
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(pairs, pairs), 0x08);
      if constexpr (N == 32) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
      else _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
    }
  }

  // 4-bit codes, lane 2i in the low nibble and lane 2i+1 in the high nibble: W/2 bytes.
  static void store_nibbles(I codes, std::uint8_t* dst) {
    const __m256i nib = _mm256_and_si256(codes, _mm256_set1_epi32(0xF));
    const __m256i pairs = _mm256_or_si256(nib, _mm256_srli_epi64(nib, 28));  // byte 0 of each qword
    const __m256i gather = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                            -1, -1, 0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i g = _mm256_shuffle_epi8(pairs, gather);
    const __m128i both = _mm_or_si128(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));
    const std::int32_t four = _mm_cvtsi128_si32(both);
    std::memcpy(dst, &four, 4);
  }
};

}  // namespace
