// cuda::LinearKernel (loraq/cuda.hpp): the integer path of src/runtime/cpu on INT8 tensor cores.
//
//   1. X (divided by the smoothing vector) is quantized per token on the device: int8 codes padded
//      to whole 32-value chunks and one fp32 scale per chunk (device_codec.cuh's int_code_in_block,
//      the codes of fake_quantize), once per distinct activation format.
//   2. T = Qa2(X) down^T: the int8 GEMM below, stored.
//   3. Y = Qa1(X) P^T with the epilogue fused: the up-projection T up^T in two fma chains (even and
//      odd j) and the bias, as the CPU's EpilogueKernel adds them.
// The int8 GEMM: blocks of 64 x 64 outputs, 4 warps of 32 x 32; per 32-value chunk, the chunk of A
// and W is staged in shared memory, each warp issues 2 x 4 mma.sync m16n8k32 (exact int32 sums of
// the chunk), and each sum goes into the fp32 accumulator as fma(float(sum), a_scale x w_scale, acc),
// chunk after chunk from 0: the CPU kernels' operations, in their order. So the outputs should equal
// the CPU integer path's bit for bit; LinearKernel.CudaEqualsCpuBitForBit (tests/cpp/
// test_linear_kernel.cpp) checks that on a GPU (it passed on an H200). It is 8-20x slower than
// cuBLAS BF16 there: no pipelining, int8-widened weights (docs/kernels.md).
// Weights are held as int8 (4-bit codes widened once at construction): simple and exact, at twice
// the weight bytes a nibble-packed kernel would read.
#include <algorithm>
#include <string>
#include <vector>

#include "cuda/cuda_support.cuh"
#include "cuda/device_codec.cuh"
#include "cuda/kernel_variants.hpp"
#include "loraq/cuda.hpp"
#include "runtime/cpu/kernel_layout.hpp"

namespace loraq::cuda {
namespace detail {
namespace {

constexpr int kChunk = 32;
constexpr int kTileM = 64, kTileN = 64, kThreads = 128;
constexpr int kRowBytes = 48;  // a staged row: 32 codes and 16 bytes of padding (no bank conflicts)

__device__ inline unsigned load32(const std::int8_t* p) { return *reinterpret_cast<const unsigned*>(p); }

// D = A B (+0) over one 32-value chunk: A 16 x 32 (row), B 32 x 8 (col), int8 in, int32 out.
__device__ inline void mma_s8(int (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0), "r"(0), "r"(0), "r"(0));
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
// until LinearKernel.CudaEqualsCpuBitForBit and bench_cuda have run it). The same tiles, warps,
// fragments and per-chunk arithmetic as int8_gemm_kernel, so the same bits; what changes is how the
// data arrive:
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

__device__ inline float exact_float(int d) {  // float(d) for |d| < 2^22, exactly
  return __fsub_rn(__int_as_float(d + 0x4B400000), 12582912.0f);
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

// One thread's share of a stage: 64 bytes (2 chunks) of one row of A and of W, and 2 scales of each.
struct StageRegisters {
  int4 a[4], w[4];
  float sa[2], sw[2];
};

template <bool kEpilogue>
__global__ void __launch_bounds__(kThreads)
    int8_gemm_pipelined_kernel(const std::int8_t* a, const float* a_scales, const std::int8_t* w,
                               const float* w_scales, std::int64_t m, std::int64_t n, std::int64_t chunks, float* out,
                               const float* t, std::int64_t rank, const float* up_t, const float* bias) {
  __shared__ __align__(16) unsigned char smem[kMainBytes];
  // Main loop: as[buf][row][kStageRow], ws likewise, then sa[buf][row][chunk], sw likewise.
  std::int8_t* as = reinterpret_cast<std::int8_t*>(smem);
  std::int8_t* ws = as + 2 * kTileM * kStageRow;
  float* sa = reinterpret_cast<float*>(ws + 2 * kTileN * kStageRow);
  float* sw = sa + 2 * kTileM * kStageChunks;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const std::int64_t m0 = std::int64_t(blockIdx.y) * kTileM, n0 = std::int64_t(blockIdx.x) * kTileN;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const std::int64_t k_padded = chunks * kChunk, stages = (chunks + kStageChunks - 1) / kStageChunks;
  // This thread stages row r (of A and of W), chunks 2h and 2h + 1 of each stage.
  const int r = tid / 2, h = tid % 2;
  const bool a_row = m0 + r < m, w_row = n0 + r < n;

  auto load = [&](std::int64_t stage, StageRegisters& regs) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const std::int64_t c = stage * kStageChunks + 2 * h + e / 2;  // e: 16-byte pieces, two a chunk
      const bool in_k = c < chunks;
      regs.a[e] = a_row && in_k ? *reinterpret_cast<const int4*>(a + (m0 + r) * k_padded + c * kChunk + (e % 2) * 16)
                                : make_int4(0, 0, 0, 0);
      regs.w[e] = w_row && in_k ? *reinterpret_cast<const int4*>(w + (n0 + r) * k_padded + c * kChunk + (e % 2) * 16)
                                : make_int4(0, 0, 0, 0);
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const std::int64_t c = stage * kStageChunks + 2 * h + e;
      regs.sa[e] = a_row && c < chunks ? a_scales[(m0 + r) * chunks + c] : 0.0f;
      regs.sw[e] = w_row && c < chunks ? w_scales[(n0 + r) * chunks + c] : 0.0f;
    }
  };
  auto store = [&](int buf, const StageRegisters& regs) {
    std::int8_t* arow = as + (buf * kTileM + r) * kStageRow + h * 64;
    std::int8_t* wrow = ws + (buf * kTileN + r) * kStageRow + h * 64;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      *reinterpret_cast<int4*>(arow + e * 16) = regs.a[e];
      *reinterpret_cast<int4*>(wrow + e * 16) = regs.w[e];
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      sa[(buf * kTileM + r) * kStageChunks + 2 * h + e] = regs.sa[e];
      sw[(buf * kTileN + r) * kStageChunks + 2 * h + e] = regs.sw[e];
    }
  };

  float acc[2][4][4] = {};
  StageRegisters next;
  if (stages > 0) {
    load(0, next);
    store(0, next);
  }
  __syncthreads();
  for (std::int64_t stage = 0; stage < stages; ++stage) {
    const int buf = int(stage % 2);
    if (stage + 1 < stages) load(stage + 1, next);  // in flight during this stage's mma
    const std::int64_t left = chunks - stage * kStageChunks;
    const int valid = left < kStageChunks ? int(left) : kStageChunks;  // the same for the whole block
    for (int j = 0; j < valid; ++j) {
      // Fragments as in int8_gemm_kernel, at chunk j of the stage.
      unsigned af[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const std::int8_t* base = as + (buf * kTileM + wm + i * 16) * kStageRow + j * kChunk;
        af[i][0] = load32(base + g * kStageRow + q * 4);
        af[i][1] = load32(base + (g + 8) * kStageRow + q * 4);
        af[i][2] = load32(base + g * kStageRow + 16 + q * 4);
        af[i][3] = load32(base + (g + 8) * kStageRow + 16 + q * 4);
      }
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const std::int8_t* base = ws + (buf * kTileN + wn + jj * 8) * kStageRow + j * kChunk;
        bf[jj][0] = load32(base + g * kStageRow + q * 4);
        bf[jj][1] = load32(base + g * kStageRow + 16 + q * 4);
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
    if (stage + 1 < stages) store(1 - buf, next);  // the other buffer: last read a stage ago, before the barrier
    __syncthreads();
  }

  float odd[2][4][4] = {};  // the epilogue's odd chains (its even ones continue acc)
  if constexpr (kEpilogue) {
    // T [rows of the tile][slice] (padded row) and up_t [slice][cols of the tile], from global memory
    // once per block, then each output's even and odd chains in the CPU's order.
    float* ts = reinterpret_cast<float*>(smem);
    float* us = ts + kTileM * (kRankSlice + 1);
    for (std::int64_t k0 = 0; k0 < rank; k0 += kRankSlice) {
      const int slice = rank - k0 < kRankSlice ? int(rank - k0) : kRankSlice;
      __syncthreads();  // the previous slice (or the main loop) is done with the shared memory
      for (int i = tid; i < kTileM * kRankSlice; i += kThreads) {
        const int row = i / kRankSlice, k = i % kRankSlice;
        ts[row * (kRankSlice + 1) + k] = m0 + row < m && k < slice ? t[(m0 + row) * rank + k0 + k] : 0.0f;
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

// A weight on the device in the kernels' layout (runtime::decode_rows).
struct DeviceWeight {
  DeviceBuffer<std::int8_t> codes;
  DeviceBuffer<float> scales;
};

DeviceWeight upload_weight(const PackedMatrix& packed, const Session& s) {
  const runtime::DecodedRows d = runtime::decode_rows(packed);
  DeviceWeight w{DeviceBuffer<std::int8_t>(d.codes.size()), DeviceBuffer<float>(d.scales.size())};
  w.codes.upload(d.codes.data(), s.stream());
  w.scales.upload(d.scales.data(), s.stream());
  s.sync();  // d's host vectors end here
  return w;
}

bool activation_format(Format f) { return f == Format::sint4 || f == Format::mxint4 || f == Format::mxint8; }

// The int8 GEMM of either variant: out = A W^T by chunks, with the epilogue (t, up_t, bias) or not.
template <bool kEpilogue>
void launch_gemm(LinearVariant variant, const Session& s, const std::int8_t* a, const float* a_scales,
                 const std::int8_t* w, const float* w_scales, std::int64_t m, std::int64_t n, std::int64_t chunks,
                 float* out, const float* t, std::int64_t rank, const float* up_t, const float* bias, const char* what) {
  const dim3 grid(unsigned((n + kTileN - 1) / kTileN), unsigned((m + kTileM - 1) / kTileM)), threads(kThreads);
  if (variant == LinearVariant::pipelined)
    int8_gemm_pipelined_kernel<kEpilogue><<<grid, threads, 0, s.stream()>>>(a, a_scales, w, w_scales, m, n, chunks,
                                                                           out, t, rank, up_t, bias);
  else
    int8_gemm_kernel<kEpilogue><<<grid, threads, 0, s.stream()>>>(a, a_scales, w, w_scales, m, n, chunks, out, t,
                                                                 rank, up_t, bias);
  check_launch(what);
}

}  // namespace

}  // namespace detail

struct LinearKernel::Impl {
  std::string name;
  int device = 0;
  std::int64_t out = 0, in = 0, rank = 0, chunks = 0;
  LinearVariant variant = LinearVariant::simple;  // LORAQ_CUDA_LINEAR when the kernel was made
  detail::DeviceFormat qa1{}, qa2{};
  bool same_activations = true;
  std::unique_ptr<detail::Session> session;
  detail::DeviceWeight residual, down;
  detail::DeviceBuffer<float> up_t, bias, smooth;  // up_t [rank, out]; smooth empty when not smoothed

  // The device buffers of one forward() of `rows` tokens.
  struct Scratch {
    detail::DeviceBuffer<float> x, y, t;
    detail::DeviceBuffer<std::int8_t> a1, a2;
    detail::DeviceBuffer<float> s1, s2;
  };
  Scratch scratch(std::int64_t rows) const {
    const auto codes = std::size_t(rows * chunks * detail::kChunk), scales = std::size_t(rows * chunks);
    const bool two = rank > 0 && !same_activations;
    return {detail::DeviceBuffer<float>(std::size_t(rows * in)), detail::DeviceBuffer<float>(std::size_t(rows * out)),
            detail::DeviceBuffer<float>(std::size_t(rows * std::max<std::int64_t>(rank, 1))),
            detail::DeviceBuffer<std::int8_t>(codes), detail::DeviceBuffer<std::int8_t>(two ? codes : 0),
            detail::DeviceBuffer<float>(scales), detail::DeviceBuffer<float>(two ? scales : 0)};
  }

  void quantize(const detail::DeviceFormat& g, const float* x, std::int64_t rows, std::int8_t* codes,
                float* scales) const {
    const std::int64_t warps = rows * ((in + g.block - 1) / g.block);
    if (warps == 0) return;
    detail::quantize_rows_kernel<<<detail::grid_for(warps * 32, 256), 256, 0, session->stream()>>>(
        x, smooth.size() ? smooth.get() : nullptr, rows, in, chunks, g, codes, scales);
    detail::check_launch("quantize_rows_kernel");
  }

  void run(Scratch& b, std::int64_t rows, bool with_branch) const {
    if (rows == 0) return;
    quantize(qa1, b.x.get(), rows, b.a1.get(), b.s1.get());
    std::int64_t t_rank = 0;
    if (with_branch && rank > 0) {
      const std::int8_t* a2 = b.a1.get();
      const float* s2 = b.s1.get();
      if (!same_activations) {
        quantize(qa2, b.x.get(), rows, b.a2.get(), b.s2.get());
        a2 = b.a2.get(), s2 = b.s2.get();
      }
      detail::launch_gemm<false>(variant, *session, a2, s2, down.codes.get(), down.scales.get(), rows, rank, chunks,
                                 b.t.get(), nullptr, 0, nullptr, nullptr, "int8 GEMM (down)");
      t_rank = rank;
    }
    detail::launch_gemm<true>(variant, *session, b.a1.get(), b.s1.get(), residual.codes.get(), residual.scales.get(),
                              rows, out, chunks, b.y.get(), b.t.get(), t_rank, up_t.get(), bias.get(),
                              "int8 GEMM (residual)");
  }
};

bool LinearKernel::supports(Format weight, Format activation) {
  return runtime::integer_format(weight) && detail::activation_format(activation);
}

LinearKernel::LinearKernel(const QuantizedLayer& layer, Format residual_activation,
                           std::optional<Format> branch_activation, std::span<const float> bias, std::string name,
                           int device)
    : impl_(std::make_unique<Impl>()) {
  Impl& k = *impl_;
  k.name = std::move(name);
  k.device = device;
  k.variant = default_linear_variant();
  k.out = layer.out_features;
  k.in = layer.in_features;
  k.chunks = (k.in + detail::kChunk - 1) / detail::kChunk;
  auto refuse = [&](const std::string& why) { throw Error(k.name + ": the CUDA kernels " + why); };
  if (layer.residual.rows != k.out || layer.residual.cols != k.in) refuse("need a residual of [out, in]");
  if (!bias.empty() && std::int64_t(bias.size()) != k.out) refuse("need a bias of out_features values");
  if (!layer.smooth.empty() && std::int64_t(layer.smooth.size()) != k.in) refuse("need a smoothing vector of in values");
  auto format_check = [&](Format w, Format a, const char* part) {
    if (!supports(w, a))
      refuse(std::string("take integer weights (sint4, mxint4, mxint8, int8_channel) with sint4, mxint4 or mxint8 "
                         "activations; the ") + part + " is " + std::string(format_info(w).name) + " x " +
             std::string(format_info(a).name) + " (the CPU kernels run it)");
  };
  format_check(layer.residual.format, residual_activation, "residual");
  detail::device_format(residual_activation, Rounding::nearest_even, k.qa1);
  if (device_count() == 0) refuse("need a CUDA GPU, and none is visible");
  k.session = std::make_unique<detail::Session>(device);
  const detail::Session& s = *k.session;
  k.residual = detail::upload_weight(layer.residual, s);
  std::vector<float> bias_host(std::size_t(k.out), 0.0f);
  std::copy(bias.begin(), bias.end(), bias_host.begin());
  k.bias = detail::DeviceBuffer<float>(bias_host.size());
  k.bias.upload(bias_host.data(), s.stream());
  if (!layer.smooth.empty()) {
    k.smooth = detail::DeviceBuffer<float>(layer.smooth.size());
    k.smooth.upload(layer.smooth.data(), s.stream());
  }
  if (layer.branch) {
    const PackedMatrix& d = layer.branch->down;
    const PackedMatrix& u = layer.branch->up;
    k.rank = d.rows;
    if (d.cols != k.in || u.rows != k.out || u.cols != k.rank) refuse("need branch factors down [rank, in], up [out, rank]");
    if (!branch_activation) refuse("need a branch activation format");
    format_check(d.format, *branch_activation, "branch down-projection");
    detail::device_format(*branch_activation, Rounding::nearest_even, k.qa2);
    k.same_activations = *branch_activation == residual_activation;
    k.down = detail::upload_weight(d, s);
    const std::vector<float> up = unpack(u);
    std::vector<float> up_t(up.size());
    for (std::int64_t row = 0; row < k.out; ++row)
      for (std::int64_t j = 0; j < k.rank; ++j) up_t[std::size_t(j * k.out + row)] = up[std::size_t(row * k.rank + j)];
    k.up_t = detail::DeviceBuffer<float>(up_t.size());
    k.up_t.upload(up_t.data(), s.stream());
    s.sync();  // the host vectors go out of scope
  }
  s.sync();
}

LinearKernel::~LinearKernel() = default;
LinearKernel::LinearKernel(LinearKernel&&) noexcept = default;
LinearKernel& LinearKernel::operator=(LinearKernel&&) noexcept = default;

void LinearKernel::forward(std::span<const float> x, std::int64_t rows, std::span<float> y, bool skip_branch) const {
  const Impl& k = *impl_;
  if (rows < 0 || std::int64_t(x.size()) != rows * k.in || std::int64_t(y.size()) != rows * k.out)
    throw Error(k.name + ": input and output must hold rows x " + std::to_string(k.in) + " and rows x " +
                std::to_string(k.out) + " values");
  detail::check(cudaSetDevice(k.device), "cudaSetDevice");
  Impl::Scratch b = k.scratch(rows);
  b.x.upload(x.data(), k.session->stream());
  k.run(b, rows, !skip_branch);
  b.y.download(y.data(), k.session->stream());
  k.session->sync();
}

double LinearKernel::time_forward(std::int64_t rows, int repeats, bool skip_branch) const {
  const Impl& k = *impl_;
  detail::check(cudaSetDevice(k.device), "cudaSetDevice");
  Impl::Scratch b = k.scratch(rows);
  detail::fill_uniform(*k.session, b.x, 7);
  return detail::median_seconds(*k.session, repeats, [&] { k.run(b, rows, !skip_branch); });
}

double time_bf16_gemm(std::int64_t m, std::int64_t n, std::int64_t k, int repeats) {
  detail::Session s(0);
  detail::DeviceBuffer<std::uint16_t> a(std::size_t(m * k)), b(std::size_t(k * n)), c(std::size_t(m * n));
  detail::check(cudaMemsetAsync(a.get(), 0x3F, a.size() * 2, s.stream()), "memset");  // 0x3F3F: about 0.75
  detail::check(cudaMemsetAsync(b.get(), 0x3F, b.size() * 2, s.stream()), "memset");
  const float alpha = 1.0f, beta = 0.0f;
  // Row-major C [m, n] = A [m, k] B^T with B [n, k] (a linear layer's weight), as column-major C^T = B A^T.
  return detail::median_seconds(s, repeats, [&] {
    detail::check(cublasGemmEx(s.blas(), CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), int(k), &alpha, b.get(),
                               CUDA_R_16BF, int(k), a.get(), CUDA_R_16BF, int(k), &beta, c.get(), CUDA_R_16BF, int(n),
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "cublasGemmEx");
  });
}

}  // namespace loraq::cuda
