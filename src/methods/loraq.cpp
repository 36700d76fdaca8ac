// loraq, the paper's method (sections 3.2-3.3, appendix A.2): a low-rank branch fitted, without
// data, to absorb the residual's quantization error, then itself quantized after a learned rotation.
//
//   1. SVD initialization: B = U S V^T at the branch rank (the paper's L = -L0, R = R0).
//   2. Adam on eq. 4, f = ||Q1(W - B) + B - W||^2, with Q1's derivative zero (A.3.2); 1000 steps,
//      rate 1e-4 for an integer Q1 and 1e-3 for a float one (A.2), on W brought to a reference
//      scale by a power of 4 so that the rates mean the same on every layer.
//   3. When Q2 is below 16 bits: a rotation Omega trained by Cayley SGD on eq. 7 (500 steps, rate
//      0.1), so that up Omega and Omega^T down quantize better; the branch up down is unchanged.
//   4. Branch = Q2(up Omega), Q2(Omega^T down); residual = Q1(W - Q2(up Omega) Q2(Omega^T down)).
// Options beyond the paper: straight_through (Q2 inside step 2, the rotation then learned before
// it), keep_best (each optimization returns its best iterate; the paper does not say). The choices
// the paper leaves open are documented where they are made (loraq_impl.hpp).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "loraq/error.hpp"
#include "loraq/linalg.hpp"
#include "methods/adam.hpp"
#include "methods/loraq_impl.hpp"
#include "methods/low_rank_branch.hpp"
#include "methods/methods.hpp"

namespace loraq::methods {
namespace loraq_impl {
namespace {

int thread_count(const QuantOptions& codec) { return codec.threads > 0 ? codec.threads : omp_get_max_threads(); }

// ||Q2(up) Q2(down) - up down||_F.
double branch_quant_error(const Factors& f, Format q2, const QuantOptions& codec) {
  std::vector<float> up_q(f.up.size()), down_q(f.down.size());
  fake_quantize(q2, f.up, up_q, f.out, f.rank, codec);
  fake_quantize(q2, f.down, down_q, f.rank, f.in, codec);
  std::vector<float> b(std::size_t(f.out * f.in)), bq(b.size());
  linalg::gemm(false, false, f.out, f.in, f.rank, 1.0f, f.up.data(), f.rank, f.down.data(), f.in, 0.0f, b.data(), f.in);
  linalg::gemm(false, false, f.out, f.in, f.rank, 1.0f, up_q.data(), f.rank, down_q.data(), f.in, 0.0f, bq.data(),
               f.in);
  double s = 0;
  for (std::size_t i = 0; i < b.size(); ++i) s += (double(bq[i]) - double(b[i])) * (double(bq[i]) - double(b[i]));
  return std::sqrt(s);
}

}  // namespace

Options options_from_params(const std::map<std::string, double>& params) {
  const MethodInfo& method = method_info("loraq");
  auto value = [&](std::string_view name) {
    const auto it = params.find(std::string(name));
    if (it != params.end()) return it->second;
    const MethodParam* p = find_param(method, name);
    if (!p) throw Error("loraq: the method table has no parameter '" + std::string(name) + "'");
    return p->default_value;
  };
  Options o;
  o.steps = int(value("steps"));
  o.lr = value("lr");
  o.rotation = value("rotation") != 0;
  o.rotation_steps = int(value("rotation_steps"));
  o.rotation_lr = value("rotation_lr");
  o.straight_through = value("straight_through") != 0;
  o.keep_best = value("keep_best") != 0;
  return o;
}

double default_lr(Format q1) {
  switch (format_info(q1).element) {
    case Element::mx_int8:
    case Element::mx_int4:
    case Element::int4:
    case Element::int8:
      return 1e-4;
    case Element::e2m1:
    case Element::e2m3:
    case Element::e3m2:
    case Element::e4m3:
    case Element::e5m2:
    case Element::e8m0:
    case Element::fp16:
    case Element::bf16:
      return 1e-3;
  }
  return 1e-3;
}

Factors svd_init(std::span<const float> w, std::int64_t out, std::int64_t in, std::int64_t rank, std::uint64_t seed) {
  linalg::SvdOptions svd_options;
  svd_options.seed = seed;
  const linalg::Svd svd = linalg::truncated_svd(w, out, in, rank, svd_options);
  Factors f{out, in, rank, std::vector<float>(std::size_t(out * rank)), std::vector<float>(std::size_t(rank * in))};
  for (std::int64_t k = 0; k < rank; ++k) {
    const float root = std::sqrt(std::max(svd.s[std::size_t(k)], 0.0f));
    for (std::int64_t o = 0; o < out; ++o) f.up[std::size_t(o * rank + k)] = svd.u[std::size_t(o * rank + k)] * root;
    for (std::int64_t j = 0; j < in; ++j) f.down[std::size_t(k * in + j)] = root * svd.vt[std::size_t(k * in + j)];
  }
  return f;
}

Trace optimize_branch(BranchObjective& objective, Factors& f, int steps, double lr, bool keep_best, int threads) {
  Adam adam_up(f.up.size()), adam_down(f.down.size());
  std::vector<float> grad_up(f.up.size()), grad_down(f.down.size());
  std::vector<float> best_up, best_down;
  if (keep_best) best_up.resize(f.up.size()), best_down.resize(f.down.size());
  const Trace trace = descend(
      steps, keep_best, "eq. 4",
      [&](bool with_gradient) {
        return objective.evaluate(f.up.data(), f.down.data(), with_gradient ? grad_up.data() : nullptr,
                                  with_gradient ? grad_down.data() : nullptr);
      },
      [&](bool save) {
        adam_up.step(f.up.data(), grad_up.data(), lr, threads, save ? best_up.data() : nullptr);
        adam_down.step(f.down.data(), grad_down.data(), lr, threads, save ? best_down.data() : nullptr);
      });
  if (keep_best && trace.best_step != steps) {
    f.up = std::move(best_up);
    f.down = std::move(best_down);
  }
  return trace;
}

std::vector<double> optimize_rotation(RotationObjective& objective, std::int64_t rank, int steps, double lr,
                                      bool keep_best, Trace* trace_out) {
  const auto n = std::size_t(rank);
  std::vector<double> omega(n * n, 0.0), grad(n * n), best(n * n);
  for (std::size_t i = 0; i < n; ++i) omega[i * n + i] = 1.0;
  const Trace trace = descend(
      steps, keep_best, "eq. 7",
      [&](bool with_gradient) { return objective.evaluate(omega, with_gradient ? grad.data() : nullptr); },
      [&](bool save) {
        if (save) best = omega;
        cayley_step(omega, grad, rank, lr);
      });
  if (trace_out) *trace_out = trace;
  return keep_best && trace.best_step != steps ? best : omega;
}

void rotate(Factors& f, std::span<const double> omega) {
  const std::int64_t r = f.rank;
  std::vector<float> om(omega.size());
  for (std::size_t i = 0; i < om.size(); ++i) om[i] = float(omega[i]);
  std::vector<float> up(f.up.size()), down(f.down.size());
  linalg::gemm(false, false, f.out, r, r, 1.0f, f.up.data(), r, om.data(), r, 0.0f, up.data(), r);
  linalg::gemm(true, false, r, f.in, r, 1.0f, om.data(), r, f.down.data(), f.in, 0.0f, down.data(), f.in);
  f.up = std::move(up);
  f.down = std::move(down);
}

QuantizedLayer run(const LayerInput& input, const Options& options, Report* report) {
  const LayerRecipe& recipe = *input.recipe;
  const std::int64_t out = input.out_features, in = input.in_features;
  const std::int64_t rank = recipe.branch_rank(in);
  if (rank > std::min(out, in))
    throw Error(std::string(input.name) + ": branch rank " + std::to_string(rank) +
                " exceeds min(out, in) = " + std::to_string(std::min(out, in)));
  const Format q1 = recipe.residual_format, q2 = recipe.branch_format;
  const QuantOptions& codec = input.codec;
  const int threads = thread_count(codec);
  const low_rank::LinalgThreads linalg_threads(codec);  // the BLAS gets the layer's share of the cores
  const bool q2_narrow = element_bits(q2) < 16;

  // Bring W to the scale A.2's rates were set on (loraq_impl.hpp, kReferenceRms) by a power of 4:
  // W * 4^k and factors * 2^k are exact, and so Q1 and Q2 see exactly the scaled problem (MX and
  // sint4 scales are scale-equivariant under powers of two); the factors are scaled back by 2^-k.
  const double w_norm2 = sum_squares(input.weight.data(), out * in);
  const double rms = std::sqrt(w_norm2 / double(out * in));
  int k = 0;
  if (rms > 0 && std::isfinite(rms))
    k = int(std::clamp(std::lround(std::log(kReferenceRms / rms) / std::log(4.0)), -40L, 40L));
  std::vector<float> w(input.weight.begin(), input.weight.end());
  const float w_scale = std::ldexp(1.0f, 2 * k);
  for (float& v : w) v *= w_scale;

  // A device's errors name the layer, as the CPU path's do.
  const Accelerator* device = input.accelerator;
  auto on_device = [&](auto&& loop) -> Trace {
    try {
      return loop();
    } catch (const Error& e) {
      throw Error(std::string(input.name) + " on " + device->describe() + ": " + e.what());
    }
  };

  Report rep;
  rep.lr = options.lr > 0 ? options.lr : options.straight_through ? kStraightThroughLr : default_lr(q1);
  Factors f = svd_init(w, out, in, rank, recipe.seed);
  const double w_scaled_norm = std::sqrt(w_norm2) * double(w_scale);
  const double to_relative = 1.0 / (w_scaled_norm > 0 ? w_scaled_norm : 1.0);
  auto learn_rotation = [&] {
    rep.branch_error_unrotated = rep.branch_error = branch_quant_error(f, q2, codec) * to_relative;
    if (!options.rotation || !q2_narrow || options.rotation_steps <= 0) return;
    std::vector<double> omega(std::size_t(rank * rank));
    if (device && device->supports(q2)) {
      rep.rotation = on_device([&] {
        return device->optimize_rotation(f.up, f.down, out, in, rank, q2, codec.rounding, options.rotation_steps,
                                         options.rotation_lr, options.keep_best, omega);
      });
    } else {
      RotationObjective objective(f, q2, codec);
      omega = optimize_rotation(objective, rank, options.rotation_steps, options.rotation_lr, options.keep_best,
                                &rep.rotation);
    }
    rotate(f, omega);
    rep.branch_error = branch_quant_error(f, q2, codec) * to_relative;
  };
  // Eq. 7 needs the factors it rotates. The paper learns it on L*, R* after Adam. With Q2 inside
  // the loop, Adam fits the factors to Q2's grid in their own basis and a later rotation undoes that
  // fit (1152 x 1152 DiT-like, sint4: 0.0703 weight error before such a rotation, 0.0749 after; mxfp4:
  // 0.0588, 0.0630), so there the rotation is learned on the SVD start and Adam trains in the rotated
  // basis (sint4 0.0701, mxfp4 0.0584).
  if (options.straight_through) learn_rotation();
  const std::optional<Format> q2_inside = options.straight_through ? std::optional<Format>(q2) : std::nullopt;
  if (device && device->supports(q1) && (!q2_inside || device->supports(*q2_inside))) {
    const BranchProblem problem{w, out, in, rank, q1, q2_inside, codec.rounding};
    rep.adam = on_device([&] { return device->optimize_branch(problem, f.up, f.down, options.steps, rep.lr,
                                                              options.keep_best); });
  } else {
    BranchObjective objective(w, out, in, rank, q1, q2_inside, codec);
    rep.adam = optimize_branch(objective, f, options.steps, rep.lr, options.keep_best, threads);
  }
  if (!options.straight_through) learn_rotation();
  const double final_branch_error =
      options.straight_through ? branch_quant_error(f, q2, codec) * to_relative : rep.branch_error;
  const float factor_unscale = std::ldexp(1.0f, -k);
  for (float& v : f.up) v *= factor_unscale;
  for (float& v : f.down) v *= factor_unscale;

  // Section 3.3 / Figure 1: the residual absorbs what the quantized branch leaves.
  QuantizedLayer layer;
  layer.out_features = out;
  layer.in_features = in;
  LowRankBranch branch{pack(q2, f.down, rank, in, codec), pack(q2, f.up, out, rank, codec)};
  const std::vector<float> up_q = unpack(branch.up, codec), down_q = unpack(branch.down, codec);
  std::vector<float> residual(std::size_t(out * in));
  linalg::gemm(false, false, out, in, rank, -1.0f, up_q.data(), rank, down_q.data(), in, 0.0f, residual.data(), in);
  for (std::size_t i = 0; i < residual.size(); ++i) residual[i] += input.weight[i];
  layer.residual = pack(q1, residual, out, in, codec);
  layer.branch = std::move(branch);
  layer.metrics.branch_quant_error = final_branch_error;
  if (report) *report = rep;
  return layer;
}

}  // namespace loraq_impl

QuantizedLayer loraq(const LayerInput& input) {
  return loraq_impl::run(input, loraq_impl::options_from_params(input.recipe->params));
}

}  // namespace loraq::methods
