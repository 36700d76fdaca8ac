// The optional CUDA backend. A build without it (LORAQ_CUDA=OFF, or no nvcc) links a stand-in whose
// functions say how to rebuild; `built()` tells which one this is.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "loraq/accelerator.hpp"
#include "loraq/format.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq::cuda {

bool built();
int device_count();  // 0 without a usable GPU (or without the backend)
bool supports(Format f);  // formats with a device codec: the seven MX formats and sint4

// The same values as loraq::fake_quantize, bit for bit, computed on GPU 0 (host buffers in and out).
// Throws Error without a GPU or for a format supports() rejects.
void fake_quantize(Format f, std::span<const float> in, std::span<float> out, std::int64_t rows, std::int64_t cols,
                   Rounding rounding = Rounding::nearest_even);

// The GPU number a device name gives: -1 for "cpu", N for "cuda:N", `plain_cuda` for "cuda" (the
// command line passes the process's local rank modulo the GPU count, so that the ranks of an mpirun
// spread over a machine's GPUs). Anything else throws Error starting with `what` and the name.
int device_number(std::string_view name, int plain_cuda, std::string_view what);

// LoRaQ's optimization loops on GPU `device` (loraq/accelerator.hpp), for `loraq quantize --device
// cuda`. Throws Error naming the cause without a GPU, for a device number out of range, or in a
// build without the backend.
std::unique_ptr<Accelerator> make_accelerator(int device = 0);

// The quantized layer of loraq/linear_kernel.hpp on a GPU: Y = Qa1(X/s) Q1(P)^T + (Qa2(X/s) Q2(down)^T)
// Q2(up)^T + bias, for integer weights (sint4, mxint4, mxint8, int8_channel) with integer activations
// quantized on the device (sint4, mxint4, mxint8). Each 32-value chunk is an exact int32 sum on INT8
// tensor cores (mma.sync m16n8k32; 4-bit codes held as int8), scaled into fp32 in chunk order; the
// down-projection runs first, and the up-projection and bias are fused into the residual's epilogue,
// with the CPU kernel's operations in its order, so that the outputs equal the CPU integer path's bit
// for bit (LinearKernel.CudaEqualsCpuBitForBit checks it on a GPU; not yet run on one).
class LinearKernel {
 public:
  // Throws Error naming `name` for a layer or format the kernels do not take, and without a GPU.
  LinearKernel(const QuantizedLayer& layer, Format residual_activation, std::optional<Format> branch_activation,
               std::span<const float> bias = {}, std::string name = "layer", int device = 0);
  ~LinearKernel();
  LinearKernel(LinearKernel&&) noexcept;
  LinearKernel& operator=(LinearKernel&&) noexcept;
  // Whether the kernels take this weight and activation format.
  static bool supports(Format weight, Format activation);

  // y [rows, out] for x [rows, in], host buffers (copied to and from the GPU).
  void forward(std::span<const float> x, std::int64_t rows, std::span<float> y, bool skip_branch = false) const;
  // y [rows, out] for x [rows, in], both already in this kernel's GPU's memory (float32, row-major),
  // queued on `stream` (a cudaStream_t as an integer; 0: the legacy default stream) after what is
  // queued there, without waiting for it: for frameworks that hold the tensors on the GPU
  // (loraq.torch). Its scratch is allocated and freed on that stream. Throws Error for a pointer that
  // is not this GPU's memory.
  void forward_device(const float* x, std::int64_t rows, float* y, std::uintptr_t stream,
                      bool skip_branch = false) const;
  int device() const;  // the GPU this kernel's weights are on
  // Median seconds of forward() on device-resident data over `repeats` runs (the benchmark).
  double time_forward(std::int64_t rows, int repeats, bool skip_branch = false) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Median seconds of a cuBLAS BF16 GEMM [m, k] x [k, n] with fp32 accumulation: the anchor of the
// kernel benchmark.
double time_bf16_gemm(std::int64_t m, std::int64_t n, std::int64_t k, int repeats);

}  // namespace loraq::cuda
