// LoRaQ's pieces (paper sections 3.2-3.3, appendix A.2-A.3), declared for loraq.cpp, the tests
// and the benchmark. The method itself is methods::loraq (methods.hpp); this header is internal.
//
// Conventions. Our weights are [out, in] (the paper's W is [in, out]); the branch is B = up @ down
// with up [out, rank] and down [rank, in], and the residual is Q1(W - B). The paper's L and R are
// -down^T and up^T (its sign convention L = -L0, R = R0 makes W + LR = W - B); every formula below
// is the paper's rewritten in ours.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "loraq/accelerator.hpp"
#include "loraq/error.hpp"
#include "loraq/format.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq::methods::loraq_impl {

// The method's parameters (the method table lists them with their defaults; see method_table.cpp).
struct Options {
  int steps = 1000;               // Adam steps on eq. 4 (A.2)
  double lr = 0;                  // Adam rate; 0: default_lr(Q1), kStraightThroughLr with straight_through
  bool rotation = true;           // learn Omega on eq. 7 when Q2 is below 16 bits
  int rotation_steps = 500;       // Cayley SGD steps (A.2)
  double rotation_lr = 0.1;       // Cayley SGD learning rate (A.2)
  bool straight_through = false;  // Q2 inside the Adam loop (not in the paper)
  bool keep_best = true;          // return the best iterate seen rather than the last
};

// Missing keys take the method table's defaults, so tests may pass a partial map.
Options options_from_params(const std::map<std::string, double>& params);

// A.2: 1e-4 when Q1's elements are integers (sint4, mxint4, mxint8, int8_channel), 1e-3 when
// they are floats (mxfp*, nvfp4, fp16, bf16).
double default_lr(Format q1);

// The Adam rate of the straight-through variant when `lr` is 0. The paper has no such variant; on
// 1152 x 1152 DiT-like weights with a 4-bit Q2, 3e-5 gave the lowest weight error of
// {1e-5, 3e-5, 1e-4, 3e-4, 1e-3} for sint4, mxint4 and mxfp4 alike (A.2's 1e-3 for float Q1 stalls
// within 70 steps: Q2's rounding makes the straight-through gradient noisy).
inline constexpr double kStraightThroughLr = 3e-5;

// The weight scale the A.2 learning rates refer to. The paper's rates are absolute steps on the
// factors of its (smoothed) PixArt-Sigma weights, whose scale it does not state. Adam moves every
// entry by about lr per step whatever the gradient's scale, and the factors scale as sqrt(W), so on
// weights 10x smaller a raw rate acts 3x larger. Measured on 1152 x 1152 DiT-like weights with a
// sint4 residual: rate 1e-3 gives the best weight error, 3e-3 diverges (eq. 4 ends 10^5 times above
// its start). Raw rates are not safe across layers and checkpoints. We therefore run both
// optimizations on W * 4^k, the power of 4 that brings rms(W) nearest kReferenceRms = 1/sqrt(1152)
// (the RMS of a [1152, 1152] layer at initialization scale, and of tests/cpp/dit_weights.hpp), and
// scale the factors back by 2^-k. Powers of two keep every format's rounding exactly scale-equivariant, so W
// and 4W give the same layer up to the factor (test LearningRateIsScaleFree).
inline constexpr double kReferenceRms = 0.029462782549439480;  // 1 / sqrt(1152)

// sum x^2 in double, in an order that does not depend on the threads.
double sum_squares(const float* x, std::int64_t n);

// The branch factors, row-major.
struct Factors {
  std::int64_t out = 0, in = 0, rank = 0;
  std::vector<float> up;    // [out, rank]
  std::vector<float> down;  // [rank, in]
};

// Section 3.2's initialization: the rank-`rank` truncated SVD W ~ U S V^T split evenly,
// up = U sqrt(S), down = sqrt(S) V^T (B = U S V^T; the paper's L = -L0, R = R0). The even split
// gives both factors the same scale, so one Adam rate suits both and Q2 sees balanced factors.
Factors svd_init(std::span<const float> w, std::int64_t out, std::int64_t in, std::int64_t rank, std::uint64_t seed);

// Eq. 4 and its gradient (A.3.2, eqs. 8-10), at a fixed W, Q1, and optionally Q2 inside the loop.
//   E = Q1(W - B) + B - W,  f = ||E||_F^2 / ||W||_F^2,
//   B = up @ down                      grad_up = 2 E down^T / ||W||^2,  grad_down = 2 up^T E / ||W||^2
//   B = Q2(up) @ Q2(down) (straight-through)   the same with Q2(down), Q2(up), Q2's derivative 1.
// Q1's derivative is taken as zero, as in A.3.2. f is eq. 4's squared Frobenius norm over ||W||^2:
// a mean-squared error up to a constant, kept scale-free so Adam's epsilon never dominates.
class BranchObjective {
 public:
  BranchObjective(std::span<const float> w, std::int64_t out, std::int64_t in, std::int64_t rank, Format q1,
                  std::optional<Format> q2_inside, const QuantOptions& codec);
  // f at (up, down); the gradients too when grad_up and grad_down are not null.
  double evaluate(const float* up, const float* down, float* grad_up, float* grad_down);
  // E of the last evaluate(), [out, in].
  std::span<const float> error() const { return e_; }
  double weight_norm2() const { return w_norm2_; }

 private:
  std::span<const float> w_;
  std::int64_t out_, in_, rank_;
  Format q1_;
  std::optional<Format> q2_;
  QuantOptions codec_;
  double w_norm2_ = 0;
  std::vector<float> e_;              // B, then E in place
  std::vector<float> up_q_, down_q_;  // Q2 of the factors (straight-through only)
  std::vector<double> row_ss_;        // per-row sums of squares: a sum independent of the threads
  std::vector<float> whole_q_;        // Q1(W - B) in one piece (formats with a tensor scale only)
  std::vector<std::vector<float>> thread_q_;  // per thread: Q1 of its block of rows (no allocation per step)
};

// Eq. 7 and its gradient, for fixed factors and Q2 (its derivative taken as zero, as A.3.2 does
// for Q1; a straight-through Q2 would make the gradient vanish, since Q2(A) - A would then have
// derivative zero):
//   A = up Omega, C = Omega^T down,
//   f = ||Q2(A) - A||^2 / ||up||^2 + ||Q2(C) - C||^2 / ||down||^2,
//   grad = -2 up^T (Q2(A) - A) / ||up||^2 - 2 down (Q2(C) - C)^T / ||down||^2.
// Each factor's error is taken relative to its norm (which Omega does not change) rather than as
// a mean over its entries: the loss is scale-free, so A.2's rate 0.1 means the same on any layer,
// and under the even split both terms weigh as they enter the branch error
// ||dA C + A dC||_F.
class RotationObjective {
 public:
  RotationObjective(const Factors& factors, Format q2, const QuantOptions& codec);
  // f at omega [rank, rank]; the gradient [rank, rank] too when grad is not null.
  double evaluate(std::span<const double> omega, double* grad);

 private:
  const Factors& f_;
  Format q2_;
  QuantOptions codec_;
  double up_norm2_ = 0, down_norm2_ = 0;
  std::vector<float> omega_f_, a_, qa_, c_, qc_, grad_f_;
};

// One step of Cayley SGD on the orthogonal group (Li, Fuxin & Todorovic 2020, "Efficient
// Riemannian optimization on the Stiefel manifold via the Cayley transform", Algorithm 1 without
// momentum, as SpinQuant's SGDG runs it): with G the Euclidean gradient at Omega,
//   W = (Omega G^T - G Omega^T) / 2        (skew-symmetric; W Omega is minus the Riemannian gradient)
//   alpha = min(lr, 1 / (||W||_1 + 1e-8))
//   Omega <- (I - alpha/2 W)^-1 (I + alpha/2 W) Omega.
// The Cayley transform is solved exactly (LU in double) where Li et al. iterate a fixed point a few
// times: the transform of a skew matrix is orthogonal, so Omega stays orthogonal to rounding error
// over any number of steps. Returns alpha.
double cayley_step(std::span<double> omega, std::span<const double> grad, std::int64_t n, double lr);

// max |Omega^T Omega - I|.
double orthogonality_error(std::span<const double> omega, std::int64_t n);

using Trace = OptimizerTrace;  // loraq/accelerator.hpp: a device reports its loops the same way

// The descent loop of both optimizations, on every device (methods/loraq.cpp, src/cuda): steps + 1
// evaluations, evaluate(with_gradient) returning the objective (no gradient at the last); after each
// but the last, update(save_best) takes one step, first saving the current iterate as the best
// when keep_best and it is the lowest so far. The caller keeps the saved iterate when keep_best and
// trace.best_step != steps, else the last. Throws Error naming `objective` and the step when the
// objective is not finite.
template <class Evaluate, class Update>
Trace descend(int steps, bool keep_best, const char* objective, Evaluate&& evaluate, Update&& update) {
  Trace trace;
  for (int step = 0; step <= steps; ++step) {
    const bool last = step == steps;
    const double loss = evaluate(!last);
    if (!std::isfinite(loss))
      throw Error(std::string("loraq: the ") + objective + " objective is not finite at step " + std::to_string(step));
    const bool improved = step == 0 || loss < trace.best;
    if (step == 0) trace.initial = loss;
    if (improved) trace.best = loss, trace.best_step = step;
    trace.last = loss;
    if (last) break;
    update(keep_best && improved);
  }
  return trace;
}

// Adam (Kingma & Ba; beta1 0.9, beta2 0.999, eps 1e-8, PyTorch's bias correction) on eq. 4 from
// `factors`, for `steps` steps at rate `lr`. Leaves the best iterate in `factors` when keep_best,
// else the last.
Trace optimize_branch(BranchObjective& objective, Factors& factors, int steps, double lr, bool keep_best, int threads);

// Cayley SGD on eq. 7 from Omega = I; returns Omega [rank, rank] (the best or the last iterate).
std::vector<double> optimize_rotation(RotationObjective& objective, std::int64_t rank, int steps, double lr,
                                      bool keep_best, Trace* trace = nullptr);

// up <- up Omega, down <- Omega^T down: the same branch, a different basis for Q2.
void rotate(Factors& factors, std::span<const double> omega);

// What the whole method did to one layer, for tests and the benchmark.
struct Report {
  Trace adam;
  Trace rotation;
  double lr = 0;  // the Adam rate used (after "auto")
  // ||Q2(up)Q2(down) - up down||_F / ||W||_F where the rotation is learned (after Adam; before it
  // with straight_through), before and after the rotation (equal without one).
  double branch_error_unrotated = 0;
  double branch_error = 0;
};

// The whole method on one layer with explicit options (methods::loraq reads them from the recipe).
// With input.accelerator set, the Adam loop runs there when it supports Q1 (and Q2 when it is inside
// the loop), and the rotation when it supports Q2; the rest runs here.
QuantizedLayer run(const LayerInput& input, const Options& options, Report* report = nullptr);

}  // namespace loraq::methods::loraq_impl
