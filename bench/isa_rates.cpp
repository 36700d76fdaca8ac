// Instruction throughput on one core for the operations that bound the linear kernels
// (docs/performance.md uses these to say how far a kernel is from its floor): 12 independent
// chains of each instruction, so latency never limits, then mixes that show whether two kinds share
// their pipes. Prints giga-instructions per second and the int8 : fp32 multiply-add rate ratio.
//
//   build/bench/isa_rates
//
// Each part runs only where the CPU has its instructions (checked at run time), so the program runs
// anywhere. Not a Google Benchmark program: each figure is the best of 3 runs of 50 M iterations.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>

namespace {

alignas(64) std::int32_t g_word[16] = {1};

// Best of 3 of 12 x iters instructions, in G instructions/s.
double rate(void (*f)(long)) {
  constexpr long kIters = 50'000'000;
  double best = 0;
  for (int run = 0; run < 3; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    f(kIters);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 12.0 * kIters / s / 1e9);
  }
  return best;
}

// The chains: `OP(x)` is one instruction updating chain register x; 12 per iteration, and the
// registers are kept live after the loop.
#define LORAQ_TWELVE(OP) OP(a0) OP(a1) OP(a2) OP(a3) OP(a4) OP(a5) OP(a6) OP(a7) OP(a8) OP(a9) OP(a10) OP(a11)
#define LORAQ_KEEP(...) asm volatile("" ::__VA_ARGS__)

// vpdpbusd, 4 bytes broadcast from memory (the form the kernels use).
#define LORAQ_DPBUSD_Z(a) asm volatile("vpdpbusd %1%{1to16%}, %2, %0" : "+v"(a) : "m"(g_word[0]), "v"(w));
#define LORAQ_DPBUSD_Y(a) asm volatile("vpdpbusd %1%{1to8%}, %2, %0" : "+v"(a) : "m"(g_word[0]), "v"(w));
#define LORAQ_FMA_Z(a) asm volatile("vfmadd231ps %1%{1to16%}, %2, %0" : "+v"(a) : "m"(g_word[0]), "v"(f));
#define LORAQ_FMA_Y(a) asm volatile("vfmadd231ps %1, %2, %0" : "+x"(a) : "x"(f), "x"(f));
#define LORAQ_MADDUBSW_Y(a) asm volatile("vpmaddubsw %1, %2, %0" : "=x"(a) : "x"(a), "x"(w));

__attribute__((target("avx512f,avx512vnni,avx512vl"))) void dpbusd_zmm(long n) {
  __m512i a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{}, a8{}, a9{}, a10{}, a11{};
  const __m512i w = _mm512_set1_epi8(3);
  for (long i = 0; i < n; ++i) { LORAQ_TWELVE(LORAQ_DPBUSD_Z) }
  LORAQ_KEEP("v"(a0), "v"(a1), "v"(a2), "v"(a3), "v"(a4), "v"(a5), "v"(a6), "v"(a7), "v"(a8), "v"(a9), "v"(a10),
             "v"(a11));
}

__attribute__((target("avx512f,avx512vnni,avx512vl"))) void dpbusd_ymm(long n) {
  __m256i a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{}, a8{}, a9{}, a10{}, a11{};
  const __m256i w = _mm256_set1_epi8(3);
  for (long i = 0; i < n; ++i) { LORAQ_TWELVE(LORAQ_DPBUSD_Y) }
  LORAQ_KEEP("v"(a0), "v"(a1), "v"(a2), "v"(a3), "v"(a4), "v"(a5), "v"(a6), "v"(a7), "v"(a8), "v"(a9), "v"(a10),
             "v"(a11));
}

__attribute__((target("avx512f"))) void fma_zmm(long n) {
  __m512 a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{}, a8{}, a9{}, a10{}, a11{};
  const __m512 f = _mm512_set1_ps(1.0f);
  for (long i = 0; i < n; ++i) { LORAQ_TWELVE(LORAQ_FMA_Z) }
  LORAQ_KEEP("v"(a0), "v"(a1), "v"(a2), "v"(a3), "v"(a4), "v"(a5), "v"(a6), "v"(a7), "v"(a8), "v"(a9), "v"(a10),
             "v"(a11));
}

// 8 vpdpbusd and 4 fused multiply-adds per 12: if they shared no pipe, this would run faster than
// either alone; at the same rate as either alone, they share.
__attribute__((target("avx512f,avx512vnni,avx512vl"))) void dpbusd_fma_mix_zmm(long n) {
  __m512i a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{};
  __m512 a8{}, a9{}, a10{}, a11{};
  const __m512i w = _mm512_set1_epi8(3);
  const __m512 f = _mm512_set1_ps(1.0f);
  for (long i = 0; i < n; ++i) {
    LORAQ_DPBUSD_Z(a0) LORAQ_DPBUSD_Z(a1) LORAQ_DPBUSD_Z(a2) LORAQ_DPBUSD_Z(a3)
    LORAQ_DPBUSD_Z(a4) LORAQ_DPBUSD_Z(a5) LORAQ_DPBUSD_Z(a6) LORAQ_DPBUSD_Z(a7)
    LORAQ_FMA_Z(a8) LORAQ_FMA_Z(a9) LORAQ_FMA_Z(a10) LORAQ_FMA_Z(a11)
  }
  LORAQ_KEEP("v"(a0), "v"(a1), "v"(a2), "v"(a3), "v"(a4), "v"(a5), "v"(a6), "v"(a7), "v"(a8), "v"(a9), "v"(a10),
             "v"(a11));
}

__attribute__((target("avx2,fma"))) void fma_ymm(long n) {
  __m256 a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{}, a8{}, a9{}, a10{}, a11{};
  const __m256 f = _mm256_set1_ps(1.0f);
  for (long i = 0; i < n; ++i) { LORAQ_TWELVE(LORAQ_FMA_Y) }
  LORAQ_KEEP("x"(a0), "x"(a1), "x"(a2), "x"(a3), "x"(a4), "x"(a5), "x"(a6), "x"(a7), "x"(a8), "x"(a9), "x"(a10),
             "x"(a11));
}

__attribute__((target("avx2"))) void maddubsw_ymm(long n) {
  __m256i a0 = _mm256_set1_epi8(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
          a10 = a0, a11 = a0;
  const __m256i w = _mm256_set1_epi8(3);
  for (long i = 0; i < n; ++i) { LORAQ_TWELVE(LORAQ_MADDUBSW_Y) }
  LORAQ_KEEP("x"(a0), "x"(a1), "x"(a2), "x"(a3), "x"(a4), "x"(a5), "x"(a6), "x"(a7), "x"(a8), "x"(a9), "x"(a10),
             "x"(a11));
}

}  // namespace

int main() {
  __builtin_cpu_init();
  std::printf("G instructions/s on one core (12 independent chains, best of 3)\n");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    const double fy = rate(fma_ymm), my = rate(maddubsw_ymm);
    std::printf("  vfmadd231ps ymm   %6.2f   (%.0f G fp32 multiply-adds/s)\n", fy, 8 * fy);
    std::printf("  vpmaddubsw ymm    %6.2f   (%.0f G 8-bit products/s, before widening sums)\n", my, 32 * my);
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni")) {
    const double dz = rate(dpbusd_zmm), dy = rate(dpbusd_ymm), fz = rate(fma_zmm), mix = rate(dpbusd_fma_mix_zmm);
    std::printf("  vpdpbusd zmm      %6.2f   (%.0f G int8 multiply-adds/s)\n", dz, 64 * dz);
    std::printf("  vpdpbusd ymm      %6.2f   (%.0f G int8 multiply-adds/s)\n", dy, 32 * dy);
    std::printf("  vfmadd231ps zmm   %6.2f   (%.0f G fp32 multiply-adds/s)\n", fz, 16 * fz);
    // 1 when the two kinds share their pipes; up to 1.5 (12 where either alone issues 8) when not.
    std::printf("  8 vpdpbusd + 4 vfmadd231ps, zmm  %6.2f   (%.2f x the slower alone)\n", mix, mix / std::min(dz, fz));
    std::printf("  int8 : fp32 multiply-add rate    %6.2f\n", 64 * dz / (16 * fz));
  } else {
    std::printf("  (no AVX-512 VNNI on this CPU)\n");
  }
  return 0;
}
