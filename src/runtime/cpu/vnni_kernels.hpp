// The VNNI panel kernels, written once over a vector-ops type V (Avx512Vnni in kernels_avx512.cpp,
// AvxVnni in kernels_avx_vnni.cpp). One call covers V::rows output rows (one int32 lane each) for up
// to V::tile tokens. vpdpbusd multiplies unsigned by signed bytes and adds each group of 4 products
// into its row's lane, with the token's 4 activation codes broadcast:
//   4-bit weights are stored +8 (unsigned nibbles): the sum is off by 8 x (sum of the codes);
//   8-bit weights are signed: flipping their top bit makes them unsigned (w + 128), and the sum is
//     off by 128 x (sum of the codes).
// The activation rows carry minus those offsets per token and chunk (offset4, offset8), and each
// chunk's sums start from them: a broadcast load instead of a subtraction per token and chunk, which
// would compete with vpdpbusd for the two 512-bit vector ports, the kernel's limit on Emerald Rapids
// (docs/performance.md). Either way the per-chunk int32 sum is exact, so each goes into the fp32
// accumulator with the same fused multiply-add as the scalar kernels: every set gives the same bits.
//
// Included only by those two files, after their V: nothing here may have external linkage
// (src/core/simd/README.md, "Linkage rule").
#pragma once

#include <cstdint>

#include "runtime/cpu/kernel_layout.hpp"
#include "runtime/cpu/token_dispatch.hpp"

namespace {

// The chunk's exact int32 sums, scaled into y.
template <class V, int T>
inline void add_chunk(const typename V::I (&sums)[T], const loraq::runtime::ActivationTile& a, std::int64_t c,
                      const typename V::F row_scales, typename V::F (&y)[T]) {
  #pragma GCC unroll 12
  for (int t = 0; t < T; ++t) {
    const typename V::F scale = V::mul(V::set1_f(a.scales[c * a.chunk_stride + t]), row_scales);
    y[t] = V::fma(V::cvt(sums[t]), scale, y[t]);
  }
}

// `body(c, sums)` adds chunk c's products into sums (one per token), which start at the chunk's
// offsets (a.offset4 or a.offset8); the rest is the same for both weight widths.
template <class V, int T, class Body>
inline void panel_loop(const float* scales, std::int64_t chunks, const loraq::runtime::ActivationTile& a,
                       const std::int32_t* offsets, float* acc, Body&& body) {
  using loraq::runtime::kPanel;
  typename V::F y[T];
  #pragma GCC unroll 12
  for (int t = 0; t < T; ++t) y[t] = V::zero_f();
  for (std::int64_t c = 0; c < chunks; ++c) {
    typename V::I sums[T];
    #pragma GCC unroll 12
    for (int t = 0; t < T; ++t) sums[t] = V::set1_i(offsets[c * a.chunk_stride + t]);
    body(c, sums);
    add_chunk<V, T>(sums, a, c, V::load_scales(scales + c * loraq::runtime::kPairScales), y);
  }
  #pragma GCC unroll 12
  for (int t = 0; t < T; ++t) V::store(acc + t * V::rows, y[t]);
}

template <class V, int T>
void panel_w4(const std::uint8_t* codes, const float* scales, std::int64_t chunks,
              const loraq::runtime::ActivationTile& a, float* acc) {
  using loraq::runtime::kChunk, loraq::runtime::kPairChunk4, loraq::runtime::kPairVector;
  const typename V::I low4 = V::set1_b(0x0F);
  panel_loop<V, T>(scales, chunks, a, a.offset4, acc, [&](std::int64_t c, typename V::I(&sums)[T]) {
    #pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const typename V::I k = V::load_codes(codes + c * kPairChunk4 + v * kPairVector);
      const typename V::I lo = V::and_(k, low4), hi = V::and_(V::srl4(k), low4);
      #pragma GCC unroll 12
      for (int t = 0; t < T; ++t) {
        const std::int8_t* x = a.codes + c * a.code_chunk_stride + t * kChunk + 8 * v;
        sums[t] = V::dpbusd(sums[t], lo, x);
        sums[t] = V::dpbusd(sums[t], hi, x + 4);
      }
    }
  });
}

template <class V, int T>
void panel_w8(const std::uint8_t* codes, const float* scales, std::int64_t chunks,
              const loraq::runtime::ActivationTile& a, float* acc) {
  using loraq::runtime::kChunk, loraq::runtime::kPairChunk8, loraq::runtime::kPairVector;
  const typename V::I top_bit = V::set1_b(std::int8_t(0x80));
  panel_loop<V, T>(scales, chunks, a, a.offset8, acc, [&](std::int64_t c, typename V::I(&sums)[T]) {
    #pragma GCC unroll 12
    for (int g = 0; g < 8; ++g) {
      const typename V::I k = V::xor_(V::load_codes(codes + c * kPairChunk8 + g * kPairVector), top_bit);
      #pragma GCC unroll 12
      for (int t = 0; t < T; ++t)
        sums[t] = V::dpbusd(sums[t], k, a.codes + c * a.code_chunk_stride + t * kChunk + 4 * g);
    }
  });
}

template <class V>
void panel_w4_any(const std::uint8_t* codes, const float* scales, std::int64_t chunks,
                  const loraq::runtime::ActivationTile& a, int tokens, float* acc) {
  with_tokens<V::tile>(tokens, [&](auto t) { panel_w4<V, decltype(t)::value>(codes, scales, chunks, a, acc); });
}

template <class V>
void panel_w8_any(const std::uint8_t* codes, const float* scales, std::int64_t chunks,
                  const loraq::runtime::ActivationTile& a, int tokens, float* acc) {
  with_tokens<V::tile>(tokens, [&](auto t) { panel_w8<V, decltype(t)::value>(codes, scales, chunks, a, acc); });
}

}  // namespace
