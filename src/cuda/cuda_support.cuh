// What every CUDA file of the backend shares: errors as loraq::Error, owned device memory, a stream
// with its cuBLAS and cuSOLVER handles, and row-major GEMMs on cuBLAS's column-major ones.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstdint>
#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "loraq/error.hpp"

namespace loraq::cuda::detail {

inline void check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw Error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(rc));
}
inline void check(cublasStatus_t rc, const char* what) {
  if (rc != CUBLAS_STATUS_SUCCESS) throw Error(std::string("cuBLAS: ") + what + ": status " + std::to_string(int(rc)));
}
inline void check(cusolverStatus_t rc, const char* what) {
  if (rc != CUSOLVER_STATUS_SUCCESS)
    throw Error(std::string("cuSOLVER: ") + what + ": status " + std::to_string(int(rc)));
}

// n values of T on the device, freed on scope exit (also when an error unwinds).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    if (n > 0) check(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)), "cudaMalloc");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  T* get() const { return p_; }
  std::size_t size() const { return n_; }
  void upload(const T* host, cudaStream_t s) const {
    check(cudaMemcpyAsync(p_, host, n_ * sizeof(T), cudaMemcpyHostToDevice, s), "copy to device");
  }
  void download(T* host, cudaStream_t s) const {
    check(cudaMemcpyAsync(host, p_, n_ * sizeof(T), cudaMemcpyDeviceToHost, s), "copy to host");
  }
  void copy_from(const DeviceBuffer& o, cudaStream_t s) const {
    check(cudaMemcpyAsync(p_, o.p_, n_ * sizeof(T), cudaMemcpyDeviceToDevice, s), "device copy");
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

// Makes `device` the calling thread's current GPU for the scope's life, then restores the one before:
// a library call must not move its caller (torch, under loraq.torch) to another GPU.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    check(cudaSetDevice(device), "cudaSetDevice");
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  ~DeviceScope() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

// One host thread's work on one GPU: its own stream and handles, so that layers in flight on
// several host threads never share cuBLAS state. The loops take one per host thread and keep it
// (thread_session below): made per call, the handles cost more than a small layer's loops.
class Session {
 public:
  explicit Session(int device) {
    try {
      check(cudaSetDevice(device), "cudaSetDevice");
      check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
      check(cublasCreate(&blas_), "cublasCreate");
      check(cublasSetStream(blas_, stream_), "cublasSetStream");
      // fp32 products (the default math mode; TF32 is not enabled): they round as the CPU SGEMM does.
      check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
      check(cusolverDnCreate(&solver_), "cusolverDnCreate");
      check(cusolverDnSetStream(solver_, stream_), "cusolverDnSetStream");
    } catch (...) {  // a failure part way (out of memory, say) releases what was made: no destructor runs
      release();
      throw;
    }
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { release(); }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  cusolverDnHandle_t solver() const { return solver_; }
  void sync() const { check(cudaStreamSynchronize(stream_), "stream synchronize"); }

 private:
  void release() noexcept {
    if (solver_) cusolverDnDestroy(solver_);
    if (blas_) cublasDestroy(blas_);
    if (stream_) cudaStreamDestroy(stream_);
    solver_ = nullptr, blas_ = nullptr, stream_ = nullptr;
  }

  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
};

// The calling thread's session on `device`, made on first use and kept for the thread's life. Never
// destroyed: the threads live until the process exits, and destroying a handle after the CUDA
// runtime has shut down at exit is not safe. A layer's loops run on one host thread, so two layers in
// flight never share a session.
inline Session& thread_session(int device) {
  thread_local std::vector<Session*> sessions;  // by device number
  if (device < 0) throw Error("CUDA device " + std::to_string(device) + " does not exist");
  if (std::size_t(device) >= sessions.size()) sessions.resize(std::size_t(device) + 1, nullptr);
  if (!sessions[std::size_t(device)]) sessions[std::size_t(device)] = new Session(device);
  check(cudaSetDevice(device), "cudaSetDevice");  // the thread may have used another device since
  return *sessions[std::size_t(device)];
}

// C[m, n] = alpha op(A) op(B) + beta C over row-major matrices (linalg::gemm's convention), in
// float or double. cuBLAS is column-major, where a row-major X is X^T: so it computes
// C^T = op(B)^T op(A)^T.
template <class T>
void gemm(const Session& s, bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
          std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  const cublasOperation_t op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  if constexpr (std::is_same_v<T, float>)
    check(cublasSgemm(s.blas(), op_b, op_a, int(n), int(m), int(k), &alpha, b, int(ldb), a, int(lda), &beta, c,
                      int(ldc)),
          "cublasSgemm");
  else
    check(cublasDgemm(s.blas(), op_b, op_a, int(n), int(m), int(k), &alpha, b, int(ldb), a, int(lda), &beta, c,
                      int(ldc)),
          "cublasDgemm");
}

// Median seconds of `repeats` timed runs of body() on the session's stream, after one warm-up.
template <class Body>
inline double median_seconds(const Session& s, int repeats, Body&& body) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  body();
  std::vector<double> times;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    check(cudaEventRecord(start, s.stream()), "cudaEventRecord");
    body();
    check(cudaEventRecord(stop, s.stream()), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    times.push_back(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Values in [-1, 1) from a fixed xorshift sequence (no NaN, every block non-zero), for benchmarks.
inline void fill_uniform(const Session& s, DeviceBuffer<float>& buffer, unsigned seed) {
  std::vector<float> host(buffer.size());
  std::uint32_t x = seed * 2654435761u + 1;
  for (float& v : host) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    v = float(x) / 2147483648.0f - 1.0f;
  }
  buffer.upload(host.data(), s.stream());
  s.sync();
}

inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline unsigned grid_for(std::int64_t threads, int block) { return unsigned((threads + block - 1) / block); }

}  // namespace loraq::cuda::detail
