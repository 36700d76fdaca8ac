// The integer kernels with AVX-512 VNNI (compiled with -mavx512f/bw/dq/vl/vnni; called only after
// the run-time CPU check). Everything but avx512_kernels() has internal linkage, for the reason
// src/core/simd/README.md gives.
//
// One call covers two panels (16 rows: one int32 lane per row) for up to 12 tokens: 12 int32 sums and
// 12 fp32 accumulators leave 8 of the 32 registers for the weights and constants, and the nibble
// unpacking, shared by the tile's tokens, costs less per token than at 8 (the residual 8-10% faster
// at 1152x1152, M = 1024 and 4096, Emerald Rapids; 16 tokens would not fit). The weight panels are
// stored in interleaved pairs (kernel_layout.hpp), so each 64-byte load gives both panels' vectors.
// The panel kernels are vnni_kernels.hpp's; the epilogue is here.
#include <immintrin.h>

#include "runtime/cpu/kernel_layout.hpp"

namespace {

using loraq::runtime::kPanel;

struct Avx512Vnni {
  static constexpr int rows = 2 * kPanel;
  static constexpr int tile = 12;
  using I = __m512i;
  using F = __m512;

  // A pair of panels' 32-byte vectors (or 8 scales) side by side (kernel_layout.hpp): one load.
  static I load_codes(const std::uint8_t* p) { return _mm512_loadu_si512(p); }
  static F load_scales(const float* p) { return _mm512_loadu_ps(p); }
  static F zero_f() { return _mm512_setzero_ps(); }
  static I set1_b(std::int8_t v) { return _mm512_set1_epi8(v); }
  static I set1_i(std::int32_t v) { return _mm512_set1_epi32(v); }
  static F set1_f(float v) { return _mm512_set1_ps(v); }
  static I and_(I a, I b) { return _mm512_and_si512(a, b); }
  static I xor_(I a, I b) { return _mm512_xor_si512(a, b); }
  static I srl4(I a) { return _mm512_srli_epi16(a, 4); }
  // acc + unsigned bytes of w x the 4 signed bytes at x, broadcast to every lane. In assembly for
  // the embedded broadcast ({1to16}): from the intrinsics GCC 12 emitted a separate vpbroadcastd
  // into a register per product, ran out of registers at 12 tokens and copied sums between them
  // (66 register moves per chunk). This form, with the token-grouped activations, took the
  // residual at 1152x1152, M = 1024, from 4.57 to 3.67 ms (docs/performance.md).
  static I dpbusd(I acc, I w, const std::int8_t* x) {
    asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const std::int32_t*>(x)));
    return acc;
  }
  static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
};

}  // namespace

// clang-format off
#include "runtime/cpu/vnni_kernels.hpp"
// clang-format on

namespace {

constexpr int kRows = Avx512Vnni::rows;
static_assert(loraq::runtime::kTokenGroup % Avx512Vnni::tile == 0, "a tile must not span two token groups");

// Two chains per token (even and odd j): 24 independent fused multiply-adds at 12 tokens; the 16
// rows' up values are one load per j for all tokens.
template <int T>
void epilogue_t(const float* acc, const float* t_rows, std::int64_t t_stride, const float* up, std::int64_t up_stride,
                std::int64_t rank, const float* bias, float* out, std::int64_t out_stride) {
  __m512 even[T], odd[T];
  #pragma GCC unroll 12
  for (int t = 0; t < T; ++t) {
    even[t] = _mm512_loadu_ps(acc + t * kRows);
    odd[t] = _mm512_setzero_ps();
  }
  std::int64_t j = 0;
  for (; j + 1 < rank; j += 2) {
    const __m512 u0 = _mm512_loadu_ps(up + j * up_stride), u1 = _mm512_loadu_ps(up + (j + 1) * up_stride);
    #pragma GCC unroll 12
    for (int t = 0; t < T; ++t) {
      even[t] = _mm512_fmadd_ps(_mm512_set1_ps(t_rows[j * t_stride + t]), u0, even[t]);
      odd[t] = _mm512_fmadd_ps(_mm512_set1_ps(t_rows[(j + 1) * t_stride + t]), u1, odd[t]);
    }
  }
  if (j < rank) {  // an odd rank: its last term goes into the even chain
    const __m512 u0 = _mm512_loadu_ps(up + j * up_stride);
    #pragma GCC unroll 12
    for (int t = 0; t < T; ++t) even[t] = _mm512_fmadd_ps(_mm512_set1_ps(t_rows[j * t_stride + t]), u0, even[t]);
  }
  const __m512 b = _mm512_loadu_ps(bias);
  #pragma GCC unroll 12
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + t * out_stride, _mm512_add_ps(_mm512_add_ps(even[t], odd[t]), b));
}

void epilogue(const float* acc, const float* t_rows, std::int64_t t_stride, const float* up, std::int64_t up_stride,
              std::int64_t rank, const float* bias, int tokens, float* out, std::int64_t out_stride) {
  with_tokens<Avx512Vnni::tile>(tokens, [&](auto t) {
    epilogue_t<decltype(t)::value>(acc, t_rows, t_stride, up, up_stride, rank, bias, out, out_stride);
  });
}

}  // namespace

namespace loraq::runtime {

const KernelSet& avx512_kernels() {
  static const KernelSet set{"avx512-vnni",          2, Avx512Vnni::tile, panel_w4_any<Avx512Vnni>,
                             panel_w8_any<Avx512Vnni>, epilogue, &avx2_kernels()};
  return set;
}

}  // namespace loraq::runtime
