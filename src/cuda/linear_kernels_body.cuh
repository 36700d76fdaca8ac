// The kernels of cuda::LinearKernel (linear_cuda.cu) and the launches of one forward pass, on
// device pointers: the integer path of src/runtime/cpu on INT8 tensor cores.
//
//   1. X (divided by the smoothing vector) is quantized per token: int8 codes padded to whole
//      32-value chunks and one fp32 scale per chunk (device_codec.cuh's int_code_in_block, the codes
//      of fake_quantize), once per distinct activation format.
//   2. T = Qa2(X) down^T: the int8 GEMM below, stored.
//   3. Y = Qa1(X) P^T with the epilogue fused: the up-projection T up^T in two fma chains (even and
//      odd j) and the bias, as the CPU's EpilogueKernel adds them.
//   (The pipelined variant runs 2 and 3 in one launch: fused_linear_kernel.)
// The int8 GEMM: blocks of 64 x 64 outputs, 4 warps of 32 x 32; per 32-value chunk each warp issues
// 2 x 4 mma.sync m16n8k32 (exact int32 sums of the chunk), and each sum goes into the fp32
// accumulator as fma(float(sum), a_scale x w_scale, acc), chunk after chunk from 0: the CPU kernels'
// operations, in their order. So the outputs equal the CPU integer path's bit for bit
// (LinearKernel.CudaEqualsCpuBitForBit on a GPU; it passed on an H200).
//
// A header so that two translation units compile it: linear_cuda.cu under nvcc, and the SIMT
// emulation's test (tests/cpp/test_cuda_emulated.cpp), which runs these kernels on the CPU.
#pragma once

#include <cstdint>
#include <vector>

#include "cuda/device_codec.cuh"
#include "cuda/device_prelude.cuh"
#include "cuda/kernel_variants.hpp"

namespace LORAQ_CUDA_DEVICE_NS {
namespace {


constexpr int kChunk = 32;
constexpr int kTileM = 64, kTileN = 64, kThreads = 128;
constexpr int kRowBytes = 48;  // a staged row: 32 codes and 16 bytes of padding (no bank conflicts)

__device__ inline unsigned load32(const std::int8_t* p) { return *reinterpret_cast<const unsigned*>(p); }

// D = A B (+0) over one 32-value chunk: A 16 x 32 (row), B 32 x 8 (col), int8 in, int32 out.
__device__ inline void mma_s8(int (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#ifdef LORAQ_SIMT_EMULATION
  simt::mma_m16n8k32_s8(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0), "r"(0), "r"(0), "r"(0));
#endif
}

// Codes [rows, chunks * 32] and chunk scales [rows, chunks] of x / smooth (smooth may be null): one
// warp per scale block, as device_codec.cuh quantizes.
__global__ void quantize_rows_kernel(const float* x, const float* smooth, std::int64_t rows, std::int64_t cols,
                                     std::int64_t chunks, DeviceFormat g, std::int8_t* codes, float* scales) {
  const std::int64_t blocks_per_row = (cols + g.block - 1) / g.block;
  const std::int64_t warp = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (warp >= rows * blocks_per_row) return;
  const std::int64_t r = warp / blocks_per_row, b = warp % blocks_per_row;
  const int lane = threadIdx.x % 32, per_lane = g.block / 32;
  float v[kMaxPerLane] = {0.0f, 0.0f};
  unsigned amax = 0;
  for (int j = 0; j < per_lane; ++j) {
    const std::int64_t c = b * g.block + lane + 32 * j;
    if (c < cols) v[j] = smooth ? __fdiv_rn(x[r * cols + c], smooth[c]) : x[r * cols + c];
    amax = max(amax, __float_as_uint(v[j]) & 0x7FFFFFFFu);
  }
  amax = __reduce_max_sync(0xFFFFFFFFu, amax);
  const std::int64_t padded = chunks * kChunk;
  float scale = 0.0f;
  for (int j = 0; j < per_lane; ++j) {
    const std::int64_t c = b * g.block + lane + 32 * j;
    const IntCode q = int_code_in_block(v[j], amax, g);
    scale = q.scale;
    if (c < padded) codes[r * padded + c] = std::int8_t(c < cols ? q.code : 0);
  }
  if (lane == 0)
    for (std::int64_t c = b * g.block / kChunk; c < min(chunks, (b + 1) * g.block / kChunk); ++c)
      scales[r * chunks + c] = scale;
}

// out[m, n] = sum over chunks of fma(float(int32 dot), a_scale x w_scale, .) for A [m, chunks * 32]
// and W [n, chunks * 32]; with_epilogue adds t [m, rank] up_t [rank, n] (even and odd chains) and
// bias [n], else stores the sums (T).
template <bool kEpilogue>
__global__ void __launch_bounds__(kThreads)
    int8_gemm_kernel(const std::int8_t* a, const float* a_scales, const std::int8_t* w, const float* w_scales,
                     std::int64_t m, std::int64_t n, std::int64_t chunks, float* out, const float* t,
                     std::int64_t rank, const float* up_t, const float* bias) {
  __shared__ __align__(16) std::int8_t as[kTileM * kRowBytes];
  __shared__ __align__(16) std::int8_t ws[kTileN * kRowBytes];
  __shared__ float sa[kTileM], sw[kTileN];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const std::int64_t m0 = std::int64_t(blockIdx.y) * kTileM, n0 = std::int64_t(blockIdx.x) * kTileN;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const std::int64_t k_padded = chunks * kChunk;
  float acc[2][4][4] = {};
  for (std::int64_t c = 0; c < chunks; ++c) {
    {  // stage the chunk: each thread 16 bytes of A and of W, and one scale
      const int r = tid / 2, h = tid % 2;
      int4 va = make_int4(0, 0, 0, 0), vw = make_int4(0, 0, 0, 0);
      if (m0 + r < m) va = *reinterpret_cast<const int4*>(a + (m0 + r) * k_padded + c * kChunk + h * 16);
      if (n0 + r < n) vw = *reinterpret_cast<const int4*>(w + (n0 + r) * k_padded + c * kChunk + h * 16);
      *reinterpret_cast<int4*>(as + r * kRowBytes + h * 16) = va;
      *reinterpret_cast<int4*>(ws + r * kRowBytes + h * 16) = vw;
      if (tid < kTileM)
        sa[tid] = m0 + tid < m ? a_scales[(m0 + tid) * chunks + c] : 0.0f;
      else
        sw[tid - kTileM] = n0 + tid - kTileM < n ? w_scales[(n0 + tid - kTileM) * chunks + c] : 0.0f;
    }
    __syncthreads();
    // Fragments (PTX ISA, mma.m16n8k32 with 8-bit operands): A's registers hold rows g and g + 8,
    // columns 4q..4q+3 and 16 + 4q..; B's hold column g, rows 4q..4q+3 and 16 + 4q...
    unsigned af[2][4], bf[4][2];
    for (int i = 0; i < 2; ++i) {
      const std::int8_t* base = as + (wm + i * 16) * kRowBytes;
      af[i][0] = load32(base + g * kRowBytes + q * 4);
      af[i][1] = load32(base + (g + 8) * kRowBytes + q * 4);
      af[i][2] = load32(base + g * kRowBytes + 16 + q * 4);
      af[i][3] = load32(base + (g + 8) * kRowBytes + 16 + q * 4);
    }
    for (int j = 0; j < 4; ++j) {
      const std::int8_t* base = ws + (wn + j * 8) * kRowBytes;
      bf[j][0] = load32(base + g * kRowBytes + q * 4);
      bf[j][1] = load32(base + g * kRowBytes + 16 + q * 4);
    }
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 4; ++j) {
        int d[4];
        mma_s8(d, af[i], bf[j]);
        // D's registers: rows g (0, 1) and g + 8 (2, 3), columns 2q and 2q + 1.
        const int r0 = wm + i * 16 + g, c0 = wn + j * 8 + 2 * q;
        for (int v = 0; v < 4; ++v) {
          const float scale = __fmul_rn(sa[r0 + (v >= 2 ? 8 : 0)], sw[c0 + (v & 1)]);
          acc[i][j][v] = __fmaf_rn(__int2float_rn(d[v]), scale, acc[i][j][v]);
        }
      }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j)
      for (int v = 0; v < 4; ++v) {
        const std::int64_t row = m0 + wm + i * 16 + g + (v >= 2 ? 8 : 0);
        const std::int64_t col = n0 + wn + j * 8 + 2 * q + (v & 1);
        if (row >= m || col >= n) continue;
        float y = acc[i][j][v];
        if constexpr (kEpilogue) {
          float even = y, odd = 0.0f;
          for (std::int64_t k = 0; k + 1 < rank; k += 2) {
            even = __fmaf_rn(t[row * rank + k], up_t[k * n + col], even);
            odd = __fmaf_rn(t[row * rank + k + 1], up_t[(k + 1) * n + col], odd);
          }
          if (rank % 2) even = __fmaf_rn(t[row * rank + rank - 1], up_t[(rank - 1) * n + col], even);
          y = __fadd_rn(__fadd_rn(even, odd), bias[col]);
        }
        out[row * n + col] = y;
      }
}

// The pipelined variant (LORAQ_CUDA_LINEAR=pipelined; written without a GPU on 2026-12-07, opt-in
// until bench_cuda has timed it on one; its bits equal the CPU's under the SIMT emulation). The same
// tiles, warps, fragments and per-chunk arithmetic as int8_gemm_kernel, so the same bits; what
// changes is how the data arrive:
// - A stage is 4 chunks (128 bytes of a row), double-buffered in shared memory: the next stage's
//   global loads are issued into registers before this stage's mma, and stored after it, with one
//   barrier a stage (int8_gemm_kernel: one chunk, two barriers, no overlap).
// - float(int32 sum) by the exact magic-number sum (|sum| < 2^22 always:
//   32 x 128 x 128 = 2^19): an integer add and a float subtract instead of an I2F conversion (which
//   is faster on Hopper is for the GPU run to show).
// - The epilogue reads T and the up-projection from shared memory, in slices of 64 rank terms
//   (int8_gemm_kernel reads both from global memory for every output).
constexpr int kStageChunks = 4;
constexpr int kStageBytes = kStageChunks * kChunk;         // 128 codes of a row
constexpr int kStageRow = kStageBytes + 16;               // padded: fragment loads hit 32 distinct banks
constexpr int kRankSlice = 64;                            // rank terms staged at a time (even: chains keep parity)
constexpr int kMainBytes = 2 * 2 * kTileM * kStageRow + 2 * 2 * kTileM * kStageChunks * 4;
constexpr int kEpilogueBytes = kTileM * (kRankSlice + 1) * 4 + kRankSlice * kTileN * 4;
static_assert(kTileM == kTileN, "the staging below maps one row of A and one of W per thread pair");
static_assert(kEpilogueBytes <= kMainBytes, "the epilogue reuses the main loop's shared memory");

// float(d) of a chunk's sum, exactly (|d| <= 2^19). sm_90 converts in one instruction (I2FP, which
// sm_80 lacks: its I2F runs on the slow conversion pipe); elsewhere the exact magic-number sum, an
// integer add and a float subtract. Both give the same float, so the choice changes no bit.
__device__ inline float exact_float(int d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return __int2float_rn(d);
#else
  return __fsub_rn(__int_as_float(d + 0x4B400000), 12582912.0f);
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8 x 16-byte matrices from shared memory, one
// instruction for what four 32-bit loads a matrix would fetch. Lane l gives the address of row
// l % 8 of matrix l / 8 (16-byte aligned); lane l receives bytes 4 (l % 4) .. + 3 of row l / 4 of
// matrix i in r[i], which is an mma.m16n8k32 fragment register when the matrices are chosen so.
__device__ inline void ldmatrix_x4(unsigned (&r)[4], const std::int8_t* row) {
#ifdef LORAQ_SIMT_EMULATION
  simt::ldmatrix_x4(r, row);
#else
  const unsigned address = unsigned(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#endif
}

// A global load that skips the SM's L1 (ld.global.cg): for data another block of the same launch
// wrote (the fused kernel's T), which L1, not coherent across SMs, could hold stale.
__device__ inline float load_global_fresh(const float* p) {
#ifdef LORAQ_SIMT_EMULATION
  return *p;
#else
  return __ldcg(p);
#endif
}

// cp.async (sm_80 and later): a copy from global to shared memory that bypasses the registers and
// lands by the next cp_async_wait_all of the issuing thread; bytes past `source_bytes` (0 or all)
// are zeros. 16-byte copies go through L2 only (.cg), 4-byte ones through L1 (.ca: .cg takes 16).
// Emulated, the copy is made at the wait, the latest moment the GPU may make it, so a read of the
// destination before the wait sees stale data there too.
template <int kBytes>
__device__ inline void cp_async(void* shared_destination, const void* global_source, bool copy) {
  static_assert(kBytes == 4 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes; the kernels use 4 and 16");
#ifdef LORAQ_SIMT_EMULATION
  simt::cp_async(shared_destination, global_source, kBytes, copy ? kBytes : 0);
#else
  const unsigned address = unsigned(__cvta_generic_to_shared(shared_destination));
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global_source),
                 "r"(copy ? 16 : 0));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(address), "l"(global_source),
                 "r"(copy ? 4 : 0));
#endif
}

// Waits for every cp.async this thread issued (PTX cp.async.wait_all: commit, then wait for all).
__device__ inline void cp_async_wait_all() {
#ifdef LORAQ_SIMT_EMULATION
  simt::cp_async_wait_all();
#else
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// f(i, jj, v, row, col) for each of the thread's 32 outputs: acc[i][jj][v], at (row, col) of the tile
// (mma m16n8 D fragments: rows g and g + 8, columns 2q and 2q + 1). Unrolled, so indices are constants.
template <class F>
__device__ inline void for_each_output(int wm, int wn, int g, int q, F&& f) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj)
#pragma unroll
      for (int v = 0; v < 4; ++v) f(i, jj, v, wm + i * 16 + g + (v >= 2 ? 8 : 0), wn + jj * 8 + 2 * q + (v & 1));
}

// Waits, in every thread of the block, until *counter >= target: another block's release (its
// writes, a __threadfence, then an atomicAdd on the counter). Only for a block that started after
// the one it waits for (the fused kernel's tickets), which therefore runs or has run: no deadlock.
// Emulated, blocks run one after another, so a counter still short can never fill: an error.
__device__ inline void wait_for_count(const int* counter, int target) {
  if (threadIdx.x == 0) {
#ifdef LORAQ_SIMT_EMULATION
    if (simt::atomic_load(counter) < target)
      throw std::logic_error("wait_for_count: a block waits for one that runs after it");
#else
    // Bounded, so that a broken launch fails (a launch error at the next synchronization) rather
    // than hangs: 2^26 polls, some seconds, where a T tile takes as long as a residual tile's main loop.
    for (long polls = 0; atomicAdd(const_cast<int*>(counter), 0) < target; ++polls) {
      if (polls == (1l << 26)) {
        printf("wait_for_count: gave up waiting for counter %p to reach %d\n", static_cast<const void*>(counter),
               target);
        __trap();
      }
      __nanosleep(100);
    }
#endif
    __threadfence();  // what the counted blocks wrote is read after this
  }
  __syncthreads();
}

// One 64 x 64 tile of the pipelined GEMM at (m0, n0) on the block's shared memory smem (kMainBytes):
// the kernels below run it once per block. t_ready, when given, is waited on (to count
// t_ready_target) before the epilogue reads T.
template <bool kEpilogue>
__device__ inline void pipelined_tile(unsigned char* smem, std::int64_t m0, std::int64_t n0, const std::int8_t* a,
                                      const float* a_scales, const std::int8_t* w, const float* w_scales,
                                      std::int64_t m, std::int64_t n, std::int64_t chunks, float* out, const float* t,
                                      std::int64_t rank, const float* up_t, const float* bias, const int* t_ready,
                                      int t_ready_target) {
  // Main loop: as[buf][row][kStageRow], ws likewise, then sa[buf][row][chunk], sw likewise.
  std::int8_t* as = reinterpret_cast<std::int8_t*>(smem);
  std::int8_t* ws = as + 2 * kTileM * kStageRow;
  float* sa = reinterpret_cast<float*>(ws + 2 * kTileN * kStageRow);
  float* sw = sa + 2 * kTileM * kStageChunks;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const std::int64_t k_padded = chunks * kChunk;
  const int stages = int((chunks + kStageChunks - 1) / kStageChunks);
  // This thread stages row r (of A and of W), chunks 2h and 2h + 1 of each stage.
  const int r = tid / 2, h = tid % 2;
  const bool a_row = m0 + r < m, w_row = n0 + r < n;
  // The row this lane addresses for ldmatrix (see the chunk loop), from the warp's tile corner.
  const int lm = lane / 8, lr = lane % 8;
  const int a_lane_offset = ((lm & 1) * 8 + lr) * kStageRow + (lm >> 1) * 16;
  const int w_lane_offset = ((lm >> 1) * 8 + lr) * kStageRow + (lm & 1) * 16;

  // This thread's row of A and of W, and their scales, at chunk 2h (for rows past the matrix, the
  // matrix's start, never read: no pointer past an allocation is formed). Chunk indices are
  // 32-bit (a row has at most 2^31 chunks), which keeps the per-stage bounds tests single compares.
  const std::int8_t* a_src = a + (a_row ? (m0 + r) * k_padded + 2 * h * kChunk : 0);
  const std::int8_t* w_src = w + (w_row ? (n0 + r) * k_padded + 2 * h * kChunk : 0);
  const float* sa_src = a_scales + (a_row ? (m0 + r) * chunks + 2 * h : 0);
  const float* sw_src = w_scales + (w_row ? (n0 + r) * chunks + 2 * h : 0);
  const int row_chunks = int(chunks);
  // This thread's share of a stage: 64 bytes (chunks 2h and 2h + 1) of row r of A and of W, and
  // their 2 scales each, copied into buffer buf by cp.async; zeros past the matrix or the row.
  auto issue = [&](int stage, int buf) {
    const int c0 = stage * kStageChunks + 2 * h;  // this thread's first chunk of the stage
    std::int8_t* arow = as + (buf * kTileM + r) * kStageRow + h * 64;
    std::int8_t* wrow = ws + (buf * kTileN + r) * kStageRow + h * 64;
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // e: 16-byte pieces, two a chunk
      const bool in_k = c0 + e / 2 < row_chunks;
      const std::int64_t at = std::int64_t(stage) * kStageBytes + e * 16;
      cp_async<16>(arow + e * 16, a_src + (a_row && in_k ? at : 0), a_row && in_k);
      cp_async<16>(wrow + e * 16, w_src + (w_row && in_k ? at : 0), w_row && in_k);
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const bool in_k = c0 + e < row_chunks;
      const std::int64_t at = std::int64_t(stage) * kStageChunks + e;
      cp_async<4>(&sa[(buf * kTileM + r) * kStageChunks + 2 * h + e], sa_src + (a_row && in_k ? at : 0), a_row && in_k);
      cp_async<4>(&sw[(buf * kTileN + r) * kStageChunks + 2 * h + e], sw_src + (w_row && in_k ? at : 0), w_row && in_k);
    }
  };

  float acc[2][4][4] = {};
  if (stages > 0) issue(0, 0);
  cp_async_wait_all();
  __syncthreads();
  for (int stage = 0; stage < stages; ++stage) {
    const int buf = stage % 2;
    // The next stage's copies, in flight during this stage's mma, into the other buffer: its last
    // reads were a stage ago, before the barrier that ended it.
    if (stage + 1 < stages) issue(stage + 1, 1 - buf);
    const int left = row_chunks - stage * kStageChunks;
    const int valid = left < kStageChunks ? left : kStageChunks;  // the same for the whole block
    const std::int8_t* a_stage = as + (buf * kTileM + wm) * kStageRow + a_lane_offset;
    const std::int8_t* w_stage = ws + (buf * kTileN + wn) * kStageRow + w_lane_offset;
#pragma unroll
    for (int j = 0; j < kStageChunks; ++j) {
      if (j >= valid) break;
      // The fragments int8_gemm_kernel loads word by word, at chunk j of the stage, by ldmatrix:
      // A's four matrices are (rows 0-7, codes 0-15), (rows 8-15, 0-15), (0-7, 16-31), (8-15, 16-31)
      // of a 16-row tile, its registers 0..3; B's are (columns of n-tile jj, codes 0-15), (jj,
      // 16-31), (jj + 1, 0-15), (jj + 1, 16-31), registers 0 and 1 of n-tiles jj and jj + 1.
      unsigned af[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) ldmatrix_x4(af[i], a_stage + i * 16 * kStageRow + j * kChunk);
#pragma unroll
      for (int jj = 0; jj < 4; jj += 2) {
        unsigned r4[4];
        ldmatrix_x4(r4, w_stage + jj * 8 * kStageRow + j * kChunk);
        bf[jj][0] = r4[0], bf[jj][1] = r4[1], bf[jj + 1][0] = r4[2], bf[jj + 1][1] = r4[3];
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          int d[4];
          mma_s8(d, af[i], bf[jj]);
          const int r0 = wm + i * 16 + g, c0 = wn + jj * 8 + 2 * q;
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            const float scale = __fmul_rn(sa[(buf * kTileM + r0 + (v >= 2 ? 8 : 0)) * kStageChunks + j],
                                          sw[(buf * kTileN + c0 + (v & 1)) * kStageChunks + j]);
            acc[i][jj][v] = __fmaf_rn(exact_float(d[v]), scale, acc[i][jj][v]);
          }
        }
    }
    cp_async_wait_all();  // the next stage has landed (for this thread's copies) ...
    __syncthreads();      // ... and for every thread's, and nobody reads this stage's buffer again
  }

  float odd[2][4][4] = {};  // the epilogue's odd chains (its even ones continue acc)
  if constexpr (kEpilogue) {
    if (t_ready && rank > 0) wait_for_count(t_ready, t_ready_target);
    // T [rows of the tile][slice] (padded row) and up_t [slice][cols of the tile], from global memory
    // once per block, then each output's even and odd chains in the CPU's order.
    float* ts = reinterpret_cast<float*>(smem);
    float* us = ts + kTileM * (kRankSlice + 1);
    for (std::int64_t k0 = 0; k0 < rank; k0 += kRankSlice) {
      const int slice = rank - k0 < kRankSlice ? int(rank - k0) : kRankSlice;
      __syncthreads();  // the previous slice (or the main loop) is done with the shared memory
      for (int i = tid; i < kTileM * kRankSlice; i += kThreads) {
        const int row = i / kRankSlice, k = i % kRankSlice;
        ts[row * (kRankSlice + 1) + k] =
            m0 + row < m && k < slice ? load_global_fresh(t + (m0 + row) * rank + k0 + k) : 0.0f;
        const int kr = i / kTileN, col = i % kTileN;
        us[kr * kTileN + col] = kr < slice && n0 + col < n ? up_t[(k0 + kr) * n + n0 + col] : 0.0f;
      }
      __syncthreads();
      for_each_output(wm, wn, g, q, [&](int i, int jj, int v, int row, int col) {
        float even = acc[i][jj][v], o = odd[i][jj][v];
        int k = 0;
        for (; k + 1 < slice; k += 2) {
          even = __fmaf_rn(ts[row * (kRankSlice + 1) + k], us[k * kTileN + col], even);
          o = __fmaf_rn(ts[row * (kRankSlice + 1) + k + 1], us[(k + 1) * kTileN + col], o);
        }
        if (k < slice)  // an odd rank's last term (only in the last slice: slices are even)
          even = __fmaf_rn(ts[row * (kRankSlice + 1) + k], us[k * kTileN + col], even);
        acc[i][jj][v] = even, odd[i][jj][v] = o;
      });
    }
  }
  for_each_output(wm, wn, g, q, [&](int i, int jj, int v, int row, int col) {
    if (m0 + row >= m || n0 + col >= n) return;
    out[(m0 + row) * n + n0 + col] =
        kEpilogue ? __fadd_rn(__fadd_rn(acc[i][jj][v], odd[i][jj][v]), bias[n0 + col]) : acc[i][jj][v];
  });
}

template <bool kEpilogue>
__global__ void __launch_bounds__(kThreads)
    int8_gemm_pipelined_kernel(const std::int8_t* a, const float* a_scales, const std::int8_t* w,
                               const float* w_scales, std::int64_t m, std::int64_t n, std::int64_t chunks, float* out,
                               const float* t, std::int64_t rank, const float* up_t, const float* bias) {
  __shared__ __align__(16) unsigned char smem[kMainBytes];
  pipelined_tile<kEpilogue>(smem, std::int64_t(blockIdx.y) * kTileM, std::int64_t(blockIdx.x) * kTileN, a, a_scales, w,
                            w_scales, m, n, chunks, out, t, rank, up_t, bias, nullptr, 0);
}

// The pipelined variant's whole layer with its branch in one launch (after the activations'
// quantization): the branch's down-projection T = Qa2(X) down^T in tiles of 64 tokens x 64 rank
// terms, and the residual's tiles with the epilogue, side by side. Apart, the down-projection has
// only ceil(M / 64) x ceil(rank / 64) blocks, each walking all of `in` alone, and the residual waits
// for all of it; here its blocks run beside the residual's, whose main loops take as long. A residual
// tile waits only before its epilogue, and only for the T tiles of its own tokens.
// Each block takes a ticket (an atomicAdd on sync[0]) and the tickets, not blockIdx, say which tile:
// T tiles first, so every T tile a residual block waits for started before it (blocks that have
// taken a ticket are running), which rules out a deadlock whatever order the GPU starts blocks in.
// A T tile publishes by counting itself into sync[1 + token tile] after a __threadfence.
struct FusedArgs {
  const std::int8_t *a1, *a2, *residual, *down;
  const float *s1, *s2, *residual_scales, *down_scales, *up_t, *bias;
  std::int64_t m, out, rank, chunks;
  float *y, *t;
  int* sync;  // 1 + ceil(m / 64) counters, zero at launch
};

__global__ void __launch_bounds__(kThreads) fused_linear_kernel(FusedArgs f) {
  __shared__ __align__(16) unsigned char smem[kMainBytes];
  __shared__ int ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(f.sync, 1);
  __syncthreads();
  const std::int64_t rank_tiles = (f.rank + kTileN - 1) / kTileN, out_tiles = (f.out + kTileN - 1) / kTileN;
  const std::int64_t t_blocks = (f.m + kTileM - 1) / kTileM * rank_tiles, my = ticket;
  if (my < t_blocks) {
    const std::int64_t tokens = my / rank_tiles;
    pipelined_tile<false>(smem, tokens * kTileM, my % rank_tiles * kTileN, f.a2, f.s2, f.down, f.down_scales, f.m,
                          f.rank, f.chunks, f.t, nullptr, 0, nullptr, nullptr, nullptr, 0);
    __threadfence();  // every thread's T stores, device-wide, before the count below
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(f.sync + 1 + tokens, 1);
  } else {
    const std::int64_t tile = my - t_blocks, tokens = tile / out_tiles;
    pipelined_tile<true>(smem, tokens * kTileM, tile % out_tiles * kTileN, f.a1, f.s1, f.residual, f.residual_scales,
                         f.m, f.out, f.chunks, f.y, f.t, f.rank, f.up_t, f.bias, f.sync + 1 + tokens,
                         int(rank_tiles));
  }
}

// The int8 GEMM of either variant: out = A W^T by chunks, with the epilogue (t, up_t, bias) or not.
template <bool kEpilogue>
void launch_gemm(LinearVariant variant, cudaStream_t stream, const std::int8_t* a, const float* a_scales,
                 const std::int8_t* w, const float* w_scales, std::int64_t m, std::int64_t n, std::int64_t chunks,
                 float* out, const float* t, std::int64_t rank, const float* up_t, const float* bias,
                 const char* what) {
  const dim3 grid(unsigned((n + kTileN - 1) / kTileN), unsigned((m + kTileM - 1) / kTileM)), threads(kThreads);
  const auto kernel =
      variant == LinearVariant::pipelined ? int8_gemm_pipelined_kernel<kEpilogue> : int8_gemm_kernel<kEpilogue>;
  launch_kernel(kernel, grid, threads, stream, what, a, a_scales, w, w_scales, m, n, chunks, out, t, rank, up_t, bias);
}

// What one forward pass reads: the layer's arrays in the kernels' layout (runtime::decode_rows for the
// weights; up_t [rank, out]; bias [out]; smooth [in] or null), and its activation formats.
struct LayerArrays {
  std::int64_t out = 0, in = 0, rank = 0, chunks = 0;
  DeviceFormat qa1{}, qa2{};
  bool same_activations = true;  // the branch reuses the residual's quantized activations
  const std::int8_t* residual_codes = nullptr;
  const float* residual_scales = nullptr;
  const std::int8_t* down_codes = nullptr;
  const float* down_scales = nullptr;
  const float* up_t = nullptr;
  const float* bias = nullptr;
  const float* smooth = nullptr;
};

// A forward pass's buffers for `rows` tokens: x [rows, in] in, y [rows, out] out; t [rows, rank],
// codes [rows, chunks * 32] and scales [rows, chunks] (a2, s2 only when the formats differ).
struct ForwardArrays {
  const float* x = nullptr;
  float* y = nullptr;
  float* t = nullptr;
  std::int8_t *a1 = nullptr, *a2 = nullptr;
  float *s1 = nullptr, *s2 = nullptr;
  int* sync = nullptr;  // sync_counters(rows) ints: the fused kernel's tickets and T tiles' counts
};

// How many ints ForwardArrays::sync holds for `rows` tokens.
inline std::int64_t sync_counters(std::int64_t rows) { return 1 + (rows + kTileM - 1) / kTileM; }

void quantize_rows(const LayerArrays& k, const DeviceFormat& g, const float* x, std::int64_t rows,
                   std::int8_t* codes, float* scales, cudaStream_t stream) {
  const std::int64_t warps = rows * ((k.in + g.block - 1) / g.block);
  if (warps == 0) return;
  launch_kernel(quantize_rows_kernel, dim3(unsigned((warps * 32 + 255) / 256)), dim3(256), stream,
                "quantize_rows_kernel", x, k.smooth, rows, k.in, k.chunks, g, codes, scales);
}

// The up-projection up [out, rank] as the epilogue reads it: up_t [rank, out].
std::vector<float> transposed_up(const std::vector<float>& up, std::int64_t out, std::int64_t rank) {
  std::vector<float> up_t(up.size());
  for (std::int64_t row = 0; row < out; ++row)
    for (std::int64_t j = 0; j < rank; ++j) up_t[std::size_t(j * out + row)] = up[std::size_t(row * rank + j)];
  return up_t;
}

// Every launch of one forward pass, in order on `stream`.
void forward_launches(const LayerArrays& k, const ForwardArrays& b, std::int64_t rows, bool with_branch,
                      LinearVariant variant, cudaStream_t stream) {
  if (rows == 0) return;
  quantize_rows(k, k.qa1, b.x, rows, b.a1, b.s1, stream);
  std::int64_t t_rank = 0;
  if (with_branch && k.rank > 0) {
    const std::int8_t* a2 = b.a1;
    const float* s2 = b.s1;
    if (!k.same_activations) {
      quantize_rows(k, k.qa2, b.x, rows, b.a2, b.s2, stream);
      a2 = b.a2, s2 = b.s2;
    }
    if (variant == LinearVariant::pipelined) {  // the down-projection and the residual in one launch
      fill_zero(b.sync, sync_counters(rows), stream);
      const FusedArgs f{b.a1, a2, k.residual_codes, k.down_codes, b.s1, s2, k.residual_scales, k.down_scales,
                        k.up_t, k.bias, rows, k.out, k.rank, k.chunks, b.y, b.t, b.sync};
      const std::int64_t tokens = (rows + kTileM - 1) / kTileM;
      const std::int64_t blocks = tokens * ((k.rank + kTileN - 1) / kTileN + (k.out + kTileN - 1) / kTileN);
      launch_kernel(fused_linear_kernel, dim3(unsigned(blocks)), dim3(kThreads), stream, "fused linear kernel", f);
      return;
    }
    launch_gemm<false>(variant, stream, a2, s2, k.down_codes, k.down_scales, rows, k.rank, k.chunks, b.t, nullptr, 0,
                       nullptr, nullptr, "int8 GEMM (down)");
    t_rank = k.rank;
  }
  launch_gemm<true>(variant, stream, b.a1, b.s1, k.residual_codes, k.residual_scales, rows, k.out, k.chunks, b.y, b.t,
                    t_rank, k.up_t, k.bias, "int8 GEMM (residual)");
}

}  // namespace
}  // namespace LORAQ_CUDA_DEVICE_NS
