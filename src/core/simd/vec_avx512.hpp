// 16-lane vector operations for the codec templates (AVX-512 F/BW/DQ/VL).
// Included only by codec_avx512.cpp; everything has internal linkage (see README.md here).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace {

struct VecAvx512 {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;

  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, F v) { _mm512_stream_ps(p, v); }  // p aligned to the vector
  static void fence() { _mm_sfence(); }
  static I bits(F v) { return _mm512_castps_si512(v); }
  static F flt(I v) { return _mm512_castsi512_ps(v); }
  static I set_i(std::int32_t x) { return _mm512_set1_epi32(x); }
  static F set_f(float x) { return _mm512_set1_ps(x); }

  static I and_i(I a, I b) { return _mm512_and_si512(a, b); }
  static I or_i(I a, I b) { return _mm512_or_si512(a, b); }
  static I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  static I sub_i(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I max_i(I a, I b) { return _mm512_max_epi32(a, b); }
  static I shr(I a, int n) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(n)); }
  static I shl(I a, int n) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(n)); }
  template <int N>
  static I shr_c(I a) { return _mm512_srli_epi32(a, N); }
  template <int N>
  static I shl_c(I a) { return _mm512_slli_epi32(a, N); }

  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F min_f(F a, F b) { return _mm512_min_ps(a, b); }

  static M eq_f(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M gt_i(I a, I b) { return _mm512_cmpgt_epi32_mask(a, b); }
  static I select_i(M m, I if_true, I if_false) { return _mm512_mask_blend_epi32(m, if_false, if_true); }
  static F select_f(M m, F if_true, F if_false) { return _mm512_mask_blend_ps(m, if_false, if_true); }

  // fp16 by the F16C instructions, round to nearest even; saturating at 65504 (a >= 0, finite).
  static std::uint16_t fp16_code(float a) {
    return static_cast<std::uint16_t>(_cvtss_sh(a < 65504.0f ? a : 65504.0f, _MM_FROUND_TO_NEAREST_INT));
  }
  static float fp16_value(std::uint16_t code) { return _cvtsh_ss(code); }
  // Each lane rounded to fp16 (nearest even, IEEE: beyond 65520 gives Inf) and widened back.
  static F fp16_round(F a) { return _mm512_cvtph_ps(_mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }

  static I cvtt(F a) { return _mm512_cvttps_epi32(a); }
  static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static I cvt_nearest(F a) { return _mm512_cvt_roundps_epi32(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static I min_i(I a, I b) { return _mm512_min_epi32(a, b); }

  // a - (a rounded to the nearest integer, ties to even), exact: one vreduceps.
  static F frac(F a) { return _mm512_reduce_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // max(|a|, |b|) for non-NaN lanes: one vrangeps (imm 0b1011: the larger magnitude, sign cleared).
  static F max_abs(F a, F b) { return _mm512_range_ps(a, b, 0x0B); }
  static M gt_f(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static bool any(M m) { return m != 0; }

  static std::int32_t hmax_i(I a) { return _mm512_reduce_max_epi32(a); }

  // Lane g = the largest lane of m[g], for W vectors at once: a transpose whose every step is a
  // max, 45 instructions for 16 vectors where 16 horizontal maxima would be about 8 dependent ones each.
  static I transpose_max(const I* m) {
    I pairs[8], quads[4], octs[2];
    for (int i = 0; i < 8; ++i)  // 128-bit lane j: [m2i m2i+1 m2i m2i+1] partials
      pairs[i] = _mm512_max_epi32(_mm512_unpacklo_epi32(m[2 * i], m[2 * i + 1]),
                                  _mm512_unpackhi_epi32(m[2 * i], m[2 * i + 1]));
    for (int i = 0; i < 4; ++i)  // 128-bit lane j: [m4i .. m4i+3], one partial each
      quads[i] = _mm512_max_epi32(_mm512_unpacklo_epi64(pairs[2 * i], pairs[2 * i + 1]),
                                  _mm512_unpackhi_epi64(pairs[2 * i], pairs[2 * i + 1]));
    for (int i = 0; i < 2; ++i)  // lanes 0-1: m8i..m8i+3, lanes 2-3: m8i+4..m8i+7, two partials each
      octs[i] = _mm512_max_epi32(_mm512_shuffle_i32x4(quads[2 * i], quads[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_i32x4(quads[2 * i], quads[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_max_epi32(_mm512_shuffle_i32x4(octs[0], octs[1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(octs[0], octs[1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  static I zero_i() { return _mm512_setzero_si512(); }
  static F zero_f() { return _mm512_setzero_ps(); }
  static M lt_f(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M and_m(M a, M b) { return M(a & b); }
  static unsigned lane_bits(M m) { return m; }
  // Each lane rounded to fp16 (nearest even) and widened back; the W fp16 codes go to `codes`.
  static F fp16_round_codes(F a, std::uint16_t* codes) {
    const __m256i h = _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes), h);
    return _mm512_cvtph_ps(h);
  }

  static void store_i32(std::int32_t* p, I a) { _mm512_storeu_si512(p, a); }

  // The low byte of each lane: W bytes.
  static void store_bytes(I codes, std::uint8_t* dst) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(codes));
  }

  // K code vectors of one block, packed: 8-bit a byte each, 4-bit two a byte (code 2i low nibble).
  template <int Bits, int K>
  static void store_codes(const I* c, std::uint8_t* dst) {
    for (int k = 0; k < K; ++k) {
      if constexpr (Bits == 8) store_bytes(c[k], dst + k * W);
      else store_nibbles(c[k], dst + k * W / 2);
    }
  }

  // 4-bit codes, lane 2i in the low nibble and lane 2i+1 in the high nibble: W/2 bytes.
  static void store_nibbles(I codes, std::uint8_t* dst) {
    const __m512i nib = _mm512_and_si512(codes, _mm512_set1_epi32(0xF));
    const __m512i pairs = _mm512_or_si512(nib, _mm512_srli_epi64(nib, 28));  // byte 0 of each qword
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi64_epi8(pairs));
  }
};

}  // namespace
