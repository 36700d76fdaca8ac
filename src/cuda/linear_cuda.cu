// cuda::LinearKernel (loraq/cuda.hpp): the integer path of src/runtime/cpu on INT8 tensor cores. The
// kernels and the launches of a forward pass are linear_kernels_body.cuh's (shared with the SIMT
// emulation's test); this file holds the layer's device memory and the public API.
// The simple variant is 8-20x slower than cuBLAS BF16 on an H200; the pipelined one is not yet timed
// (docs/kernels.md). Weights are held as int8 (4-bit codes widened once at construction): simple and
// exact, at twice the weight bytes a nibble-packed kernel would read.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_support.cuh"
#include "cuda/cuda_testing.hpp"
#include "cuda/kernel_variants.hpp"
#include "cuda/linear_kernels_body.cuh"
#include "loraq/cuda.hpp"
#include "runtime/cpu/kernel_layout.hpp"

namespace loraq::cuda {
namespace detail {
namespace {

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

  // The element counts of a forward pass's scratch for `rows` tokens: T, the activations' codes and
  // scales (a second set only when the branch's activation format differs), the fused kernel's
  // counters. Both kinds of scratch below are laid out from it.
  struct ScratchCounts {
    std::size_t t, codes1, codes2, scales1, scales2, sync;
  };
  ScratchCounts scratch_counts(std::int64_t rows) const {
    const auto codes = std::size_t(rows * chunks * detail::kChunk), scales = std::size_t(rows * chunks);
    const bool two = rank > 0 && !same_activations;
    return {std::size_t(rows * std::max<std::int64_t>(rank, 1)), codes, two ? codes : 0, scales, two ? scales : 0,
            std::size_t(detail::sync_counters(rows))};
  }

  // The device buffers of one forward() of `rows` tokens.
  struct Scratch {
    detail::DeviceBuffer<float> x, y, t;
    detail::DeviceBuffer<std::int8_t> a1, a2;
    detail::DeviceBuffer<float> s1, s2;
    detail::DeviceBuffer<int> sync;
  };
  Scratch scratch(std::int64_t rows) const {
    const ScratchCounts c = scratch_counts(rows);
    return {detail::DeviceBuffer<float>(std::size_t(rows * in)), detail::DeviceBuffer<float>(std::size_t(rows * out)),
            detail::DeviceBuffer<float>(c.t), detail::DeviceBuffer<std::int8_t>(c.codes1),
            detail::DeviceBuffer<std::int8_t>(c.codes2), detail::DeviceBuffer<float>(c.scales1),
            detail::DeviceBuffer<float>(c.scales2), detail::DeviceBuffer<int>(c.sync)};
  }

  // The scratch of one forward_device() call: one stream-ordered allocation on the caller's stream,
  // so that calls on different streams never share it and nothing waits for the device to be idle.
  struct StreamScratch {
    cudaStream_t stream;
    void* base = nullptr;
    detail::ForwardArrays arrays;
    StreamScratch(const Impl& k, const float* x, float* y, std::int64_t rows, cudaStream_t s) : stream(s) {
      const ScratchCounts c = k.scratch_counts(rows);
      const std::size_t bytes[] = {c.t * sizeof(float), c.codes1, c.codes2, c.scales1 * sizeof(float),
                                   c.scales2 * sizeof(float), c.sync * sizeof(int)};
      std::size_t offsets[6], total = 0;
      for (int i = 0; i < 6; ++i) offsets[i] = total, total += (bytes[i] + 255) / 256 * 256;  // 256-byte aligned parts
      detail::check(cudaMallocAsync(&base, total, stream), "cudaMallocAsync");
      auto* at = static_cast<char*>(base);
      arrays = {x,
                y,
                reinterpret_cast<float*>(at + offsets[0]),
                reinterpret_cast<std::int8_t*>(at + offsets[1]),
                c.codes2 ? reinterpret_cast<std::int8_t*>(at + offsets[2]) : nullptr,
                reinterpret_cast<float*>(at + offsets[3]),
                c.scales2 ? reinterpret_cast<float*>(at + offsets[4]) : nullptr,
                reinterpret_cast<int*>(at + offsets[5])};
    }
    StreamScratch(const StreamScratch&) = delete;
    StreamScratch& operator=(const StreamScratch&) = delete;
    ~StreamScratch() { cudaFreeAsync(base, stream); }  // after the launches queued on the stream
  };

  static detail::ForwardArrays arrays_of(const Scratch& b) {
    return {b.x.get(), b.y.get(), b.t.get(), b.a1.get(), b.a2.get(), b.s1.get(), b.s2.get(), b.sync.get()};
  }

  void run(const detail::ForwardArrays& b, std::int64_t rows, bool with_branch, cudaStream_t stream) const {
    detail::LayerArrays k;
    k.out = out, k.in = in, k.rank = rank, k.chunks = chunks;
    k.qa1 = qa1, k.qa2 = qa2, k.same_activations = same_activations;
    k.residual_codes = residual.codes.get(), k.residual_scales = residual.scales.get();
    k.down_codes = down.codes.get(), k.down_scales = down.scales.get();
    k.up_t = up_t.get(), k.bias = bias.get(), k.smooth = smooth.size() ? smooth.get() : nullptr;
    detail::forward_launches(k, b, rows, with_branch, variant, stream);
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
  const detail::DeviceScope scope(device);  // the caller's current GPU again on return
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
    const std::vector<float> up_t = detail::transposed_up(unpack(u), k.out, k.rank);
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
  const detail::DeviceScope scope(k.device);
  Impl::Scratch b = k.scratch(rows);
  b.x.upload(x.data(), k.session->stream());
  k.run(Impl::arrays_of(b), rows, !skip_branch, k.session->stream());
  b.y.download(y.data(), k.session->stream());
  k.session->sync();
}

double LinearKernel::time_forward(std::int64_t rows, int repeats, bool skip_branch) const {
  const Impl& k = *impl_;
  const detail::DeviceScope scope(k.device);
  Impl::Scratch b = k.scratch(rows);
  detail::fill_uniform(*k.session, b.x, 7);
  return detail::median_seconds(*k.session, repeats,
                                [&] { k.run(Impl::arrays_of(b), rows, !skip_branch, k.session->stream()); });
}

int LinearKernel::device() const { return impl_->device; }

void LinearKernel::forward_device(const float* x, std::int64_t rows, float* y, std::uintptr_t stream,
                                  bool skip_branch) const {
  const Impl& k = *impl_;
  if (rows < 0) throw Error(k.name + ": rows must be >= 0, got " + std::to_string(rows));
  if (rows == 0) return;
  // A host pointer here would make the kernels fault: refuse it by name instead.
  for (const auto& [pointer, what] : {std::pair<const void*, const char*>{x, "x"}, {y, "y"}}) {
    cudaPointerAttributes a{};
    const bool device_memory = cudaPointerGetAttributes(&a, pointer) == cudaSuccess &&
                               (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged);
    cudaGetLastError();  // a failed query leaves no sticky error behind
    if (!device_memory || a.device != k.device)
      throw Error(k.name + ": forward_device needs " + what + " in the memory of GPU " + std::to_string(k.device));
  }
  const detail::DeviceScope scope(k.device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const Impl::StreamScratch scratch(k, x, y, rows, s);
  k.run(scratch.arrays, rows, !skip_branch, s);
  detail::check(cudaGetLastError(), "the linear kernels' launch");
}

namespace testing {

std::vector<float> forward_through_device_memory(const LinearKernel& kernel, std::span<const float> x,
                                                 std::int64_t rows, std::int64_t out, bool skip_branch) {
  const detail::DeviceScope scope(kernel.device());
  const detail::Session s(kernel.device());
  detail::DeviceBuffer<float> dx(x.size()), dy(std::size_t(rows * out));
  dx.upload(x.data(), s.stream());
  kernel.forward_device(dx.get(), rows, dy.get(), reinterpret_cast<std::uintptr_t>(s.stream()), skip_branch);
  std::vector<float> y(dy.size());
  dy.download(y.data(), s.stream());
  s.sync();
  return y;
}

}  // namespace testing

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
