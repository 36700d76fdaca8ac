// The integer kernels with AVX-VNNI, the VEX-encoded 256-bit vpdpbusd of CPUs that have it without
// AVX-512 (Alder Lake and later Intel client cores, Sierra Forest; compiled with -mavx2 -mavxvnni,
// called only after the run-time CPU check). Everything but avx_vnni_kernels() has internal
// linkage, for the reason src/core/simd/README.md gives.
//
// The AVX2 kernels' panels and tiles (8 rows x up to 4 tokens: VEX has 16 registers) through
// vnni_kernels.hpp: vpdpbusd in place of vpmaddubsw + vpaddw + vpmaddwd.
#include <immintrin.h>

#include <cstring>

#include "runtime/cpu/kernel_layout.hpp"

namespace {

struct AvxVnni {
  static constexpr int rows = loraq::runtime::kPanel;
  static constexpr int tile = 4;
  using I = __m256i;
  using F = __m256;

  static I load_codes(const std::uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static F load_scales(const float* p) { return _mm256_loadu_ps(p); }
  static F zero_f() { return _mm256_setzero_ps(); }
  static I set1_b(std::int8_t v) { return _mm256_set1_epi8(v); }
  static I set1_i(std::int32_t v) { return _mm256_set1_epi32(v); }
  static F set1_f(float v) { return _mm256_set1_ps(v); }
  static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  static I xor_(I a, I b) { return _mm256_xor_si256(a, b); }
  static I srl4(I a) { return _mm256_srli_epi16(a, 4); }
  // acc + unsigned bytes of w x the 4 signed bytes at x, broadcast to every lane.
  static I dpbusd(I acc, I w, const std::int8_t* x) {
    std::int32_t v;
    std::memcpy(&v, x, 4);
    return _mm256_dpbusd_avx_epi32(acc, w, _mm256_set1_epi32(v));
  }
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
};
static_assert(loraq::runtime::kTokenGroup % AvxVnni::tile == 0, "a tile must not span two token groups");

}  // namespace

// clang-format off
#include "runtime/cpu/vnni_kernels.hpp"
// clang-format on

namespace loraq::runtime {

// The fp32 epilogue has nothing to gain from VNNI: it is the AVX2 one.
const KernelSet& avx_vnni_kernels() {
  static const KernelSet set{"avx-vnni", 1, AvxVnni::tile, panel_w4_any<AvxVnni>, panel_w8_any<AvxVnni>,
                             avx2_kernels().epilogue, &set};
  return set;
}

}  // namespace loraq::runtime
