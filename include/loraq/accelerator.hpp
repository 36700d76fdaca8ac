// A device that runs LoRaQ's two optimization loops (eq. 4's Adam, eq. 7's Cayley SGD) in place of
// the CPU. The core library only knows this interface; the CUDA backend implements it
// (loraq/cuda.hpp: cuda::make_accelerator), and `loraq quantize --device cuda` hands one to the
// pipeline. Everything around the loops (the SVD start, the final packing and residual) stays on the
// CPU, so a layer's stored bytes are made by the same code on every device.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "loraq/format.hpp"

namespace loraq {

// How one optimization went: the objective at the start, at the last iterate and at the best one.
struct OptimizerTrace {
  double initial = 0;  // objective at the start
  double last = 0;     // at the last iterate
  double best = 0;     // lowest seen
  int best_step = 0;   // iterate with the lowest (0: the start)
};

// Eq. 4 at a fixed (already scaled) weight: what methods/loraq_impl.hpp's BranchObjective takes.
struct BranchProblem {
  std::span<const float> weight;  // [out, in], row-major, host memory
  std::int64_t out = 0, in = 0, rank = 0;
  Format q1 = Format::sint4;
  std::optional<Format> q2_inside;  // straight-through: Q2 of the factors inside the loop
  Rounding rounding = Rounding::nearest_even;
};

// Implementations must be safe to call from several host threads at once (the pipeline keeps a
// few layers in flight) and must follow the CPU loops' contracts step for step (loraq.cpp:
// optimize_branch, optimize_rotation), so that results agree within floating-point reordering.
class Accelerator {
 public:
  virtual ~Accelerator() = default;
  virtual std::string describe() const = 0;  // for messages and reports, e.g. "cuda:0 (NVIDIA H100)"
  // Whether its kernels quantize `f` with the CPU's bits; layers needing another format run on the CPU.
  virtual bool supports(Format f) const = 0;

  // Adam (beta1 0.9, beta2 0.999, eps 1e-8) on eq. 4 from up [out, rank] and down [rank, in], updated
  // in place; leaves the best iterate when keep_best, else the last. Throws Error on a non-finite
  // objective, naming the step.
  virtual OptimizerTrace optimize_branch(const BranchProblem& problem, std::span<float> up, std::span<float> down,
                                         int steps, double lr, bool keep_best) const = 0;

  // Cayley SGD on eq. 7 from Omega = I for the fixed factors; writes Omega [rank, rank] (the best
  // iterate when keep_best, else the last).
  virtual OptimizerTrace optimize_rotation(std::span<const float> up, std::span<const float> down, std::int64_t out,
                                           std::int64_t in, std::int64_t rank, Format q2, Rounding rounding, int steps,
                                           double lr, bool keep_best, std::span<double> omega) const = 0;
};

}  // namespace loraq
