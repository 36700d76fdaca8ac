// A quantized linear layer that runs: Y = Qa1(X/s) Q1(P)^T + (Qa2(X/s) Q2(down)^T) Q2(up)^T + bias,
// computed from the packed weights of a QuantizedLayer (what `loraq quantize` stores), not from
// fake-quantized floats.
//
// Integer path (src/runtime/cpu): when a weight and its activation are both integer block formats
// (sint4, mxint4, mxint8, int8_channel), each 32-value chunk of a dot product is an exact int32 sum
// of code products, scaled once by (activation scale x weight scale) into an fp32 accumulator. The
// activations are quantized per token in the same pass that feeds both the residual and the branch's
// down-projection. The up-projection runs in fp32 on the fp32 intermediate T = Qa2(X) down^T, as in
// the paper's formula, unless the layer is given an intermediate activation format Qt: then
// Y = Qa1(X/s) Q1(P)^T + Qt(T) Q2(up)^T + bias, and with Qt and up both integer formats the
// up-projection runs on the integer kernels too (the paper's future work: with AVX-512 VNNI the fp32
// up-projection costs about four times a residual multiply-add per term, and at in = 1152 it is
// most of the branch's cost).
// Float path: any other format pair (mxfp4, nvfp4, an fp16 branch ...) is dequantized once and runs
// as an fp32 GEMM on fake-quantized activations, so every recipe can run.
//
// Results do not depend on the thread count, and the AVX2 and scalar integer paths give identical
// bits (tests/cpp/test_linear_kernel.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "loraq/format.hpp"
#include "loraq/isa.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq {

struct LinearKernelOptions {
  std::optional<Isa> isa;    // nullopt: the best the CPU has (LORAQ_ISA overrides)
  int threads = 0;           // 0: OpenMP's default
  bool skip_branch = false;  // residual only (benchmarks measure the branch's cost with it)
};

// True when the integer path takes a weight of format w with activations of format a.
bool integer_kernel_supports(Format weight, Format activation);

// The activation formats of a layer; unset: fp32 (for the intermediate: T not quantized).
struct LayerActivations {
  std::optional<Format> residual;      // Qa1, at the residual's input X/s
  std::optional<Format> branch;        // Qa2, at the branch's input X/s
  std::optional<Format> intermediate;  // Qt, at the up-projection's input T = Qa2(X/s) down^T
};

class QuantizedLinearKernel {
 public:
  // Repacks the layer's weights for the kernels. An activation format left unset means fp32
  // activations (the float path, as loraq.torch does for 16-bit inputs). `bias` is empty or
  // [out_features]. Throws Error when the layer is inconsistent (sizes, a branch whose factors
  // disagree) naming `name`.
  QuantizedLinearKernel(const QuantizedLayer& layer, const LayerActivations& activations,
                        std::span<const float> bias = {}, std::string name = "layer");
  QuantizedLinearKernel(const QuantizedLayer& layer, std::optional<Format> residual_activation,
                        std::optional<Format> branch_activation,
                        std::span<const float> bias = {}, std::string name = "layer");
  ~QuantizedLinearKernel();
  QuantizedLinearKernel(QuantizedLinearKernel&&) noexcept;
  QuantizedLinearKernel& operator=(QuantizedLinearKernel&&) noexcept;

  // y [rows, out_features] for x [rows, in_features], both row-major fp32. Throws Error on a size
  // mismatch. Non-finite inputs give non-finite outputs in their rows (no error).
  void forward(std::span<const float> x, std::int64_t rows, std::span<float> y,
               const LinearKernelOptions& options = {}) const;

  std::int64_t out_features() const;
  std::int64_t in_features() const;
  std::int64_t rank() const;  // 0 without a branch
  bool residual_is_integer() const;
  bool branch_is_integer() const;      // the down-projection
  bool up_is_integer() const;          // the up-projection (only with an integer intermediate format)

  // T [rows, rank] (row-major fp32) as forward() computes it, before Qt: for checks, and for
  // choosing an intermediate format from T's values. Empty without a branch.
  std::vector<float> intermediate(std::span<const float> x, std::int64_t rows,
                                  const LinearKernelOptions& options = {}) const;
  // "integer (avx2)", "float (sgemm)" ...: what forward() runs for each part, for reports.
  std::string describe(const LinearKernelOptions& options = {}) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace loraq
