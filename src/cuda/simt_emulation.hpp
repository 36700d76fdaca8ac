// The CUDA device vocabulary on the host, so that the backend's kernels (quant_kernels_body.cuh,
// linear_kernels_body.cuh) also compile with g++ and run on the CPU: every thread of a thread block
// is an OS thread, __syncthreads a barrier over the block, and each warp collective (shuffles, the
// max reduction, mma.sync, ldmatrix) an exchange through the warp's slots between two barriers over its 32
// lanes. Thread blocks run one after another.
//
// What for: kernels written on a machine without a GPU run here, in the tests, bit for bit against
// the CPU reference, before a GPU ever sees them (tests/cpp/test_cuda_emulated.cpp). Every emulated
// thread runs to its next barrier in whatever order the OS picks, which shakes out a missing
// __syncthreads often (and ThreadSanitizer's build of the test, always). The mma fragment layouts are
// PTX's (m16n8k32, 8-bit operands); the simple linear kernel, which passed bit for bit on an H200,
// passing here too checks that reading of them.
// What it cannot show: speed; races that only a GPU's memory model would expose; and reads of
// __shared__ memory before it is written (the arrays keep the previous block's contents, where a
// GPU's start undefined).
//
// Only for the tests: included by the device headers when LORAQ_SIMT_EMULATION is defined, never by
// nvcc.
#pragma once

#include <math.h>  // fabsf, fminf, rintf, roundf and signbit in the global namespace, as CUDA has them

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>

namespace loraq::simt {

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Runs body on grid.x * grid.y * grid.z blocks of block.x * block.y * block.z threads (blocks in
// order, a block's threads at once). An exception in any thread is rethrown here once the launch ends;
// a thread that returns early leaves the block's and its warp's barriers (as exited GPU threads do).
void launch(dim3 grid, dim3 block, const std::function<void()>& body);

// The calling thread's indices, and the launch's sizes.
const dim3& thread_index();
const dim3& block_index();
const dim3& block_dim();
const dim3& grid_dim();

void sync_threads();
// The value `lane` of the calling warp passed in the same call (every lane of the warp calls).
std::uint64_t warp_exchange(std::uint64_t mine, int lane);
// The largest value any lane of the calling warp passed.
unsigned warp_max(unsigned mine);
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 with C = 0: the warp's fragments in, this lane's
// part of D out.
void mma_m16n8k32_s8(int (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]);
// ldmatrix.sync.aligned.m8n8.x4.shared.b16: each lane gives one row's address (row l % 8 of matrix
// l / 8); lane l receives the 4 bytes at 4 (l % 4) of row l / 4 of matrix i in r[i].
void ldmatrix_x4(unsigned (&r)[4], const void* row);
// cp.async: `bytes` from source to destination, of which those past source_bytes are zeros, made
// when the calling thread next calls cp_async_wait_all (the latest moment a GPU may make it).
void cp_async(void* destination, const void* source, int bytes, int source_bytes);
void cp_async_wait_all();
// An atomic read of *p (the fused kernel's counters).
int atomic_load(const int* p);

}  // namespace loraq::simt

// The device vocabulary the kernels use, spelled as CUDA spells it.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // one thread block runs at a time, so one instance is the block's
#define threadIdx (::loraq::simt::thread_index())
#define blockIdx (::loraq::simt::block_index())
#define blockDim (::loraq::simt::block_dim())
#define gridDim (::loraq::simt::grid_dim())

using dim3 = ::loraq::simt::dim3;
using cudaStream_t = void*;
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// Rounded arithmetic: the host build has no contraction (-ffp-contract=off), so each operation
// rounds once, as the _rn intrinsics do.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __int2float_rn(int v) { return float(v); }
inline int __float2int_rn(float v) { return int(std::nearbyint(v)); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(unsigned(v)); }

// fp16 through the compiler's _Float16 (round to nearest even, as __float2half_rn).
using __half = _Float16;
inline __half __float2half_rn(float v) { return static_cast<_Float16>(v); }
inline float __half2float(__half v) { return static_cast<float>(v); }

// CUDA's min and max for one type at a time (the kernels never mix types in a call).
template <class T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <class T>
inline T max(T a, T b) {
  return a < b ? b : a;
}

inline void __syncthreads() { ::loraq::simt::sync_threads(); }
inline unsigned __shfl_xor_sync(unsigned, unsigned v, int offset) {
  const int lane = int(threadIdx.x % 32);
  return unsigned(::loraq::simt::warp_exchange(v, lane ^ offset));
}
inline double __shfl_down_sync(unsigned, double v, int offset) {
  const int lane = int(threadIdx.x % 32), from = lane + offset < 32 ? lane + offset : lane;
  return std::bit_cast<double>(::loraq::simt::warp_exchange(std::bit_cast<std::uint64_t>(v), from));
}
inline unsigned __reduce_max_sync(unsigned, unsigned v) { return ::loraq::simt::warp_max(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
// Blocks run one after another, ordered by the launch's barriers, so a device-wide fence has
// nothing left to order (and ThreadSanitizer does not model std::atomic_thread_fence).
inline void __threadfence() {}
