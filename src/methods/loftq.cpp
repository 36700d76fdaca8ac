// loftq: LoftQ's alternating minimization (Li et al. 2023) as deepcompressor runs it for SVDQuant's
// low-rank calibration (calib/lowrank.py), with the weight error as its objective (no data):
//
//   R_1 = Q1(W) with `compensate`, else 0;  for t = 1..T:  B_t = SVD_r(W - R_t) in Q2,
//   R_{t+1} = Q1(W - Q2(B_t)),  error_t = ||W - R_{t+1} - Q2(B_t)||_F,
//
// keeping the B_t of least error (with its residual R_{t+1}). The first iterate is exactly
// svd_lowrank's layer (deepcompressor's default, compensate off) or, with compensate, lorc's (LoftQ's
// own initialization): same SVD input, options and seed, so loftq never does worse on the weight
// error than the method it starts from. Defaults from deepcompressor's SVDQuant configuration
// (configs/svdquant/__default__.yaml: num_iters 100, early_stop true; QuantLowRankConfig:
// compensate false): stop at the first iterate that does not improve.
//
// As in svd_lowrank.cpp, the residual subtracts the branch as stored, Q2(up) Q2(down), so it also
// absorbs what Q2 loses on the factors; each iterate is judged on exactly the layer it would give.
#include <cmath>
#include <optional>
#include <string>

#include "loraq/error.hpp"
#include "methods/low_rank_branch.hpp"
#include "methods/methods.hpp"

namespace loraq::methods {

QuantizedLayer loftq(const LayerInput& input) {
  const LayerRecipe& recipe = *input.recipe;
  const low_rank::LinalgThreads threads(input.codec);
  const std::int64_t out = input.out_features, in = input.in_features;
  const std::int64_t rank = low_rank::branch_rank(input);
  const int iterations = int(low_rank::param(recipe, "iterations"));
  const bool early_stop = low_rank::param(recipe, "early_stop") != 0;
  const bool compensate = low_rank::param(recipe, "compensate") != 0;
  const linalg::SvdOptions svd = low_rank::svd_options(recipe);
  const Format q1 = recipe.residual_format, q2 = recipe.branch_format;

  std::vector<float> residual(input.weight.size(), 0.0f);  // R_t, unpacked
  if (compensate) fake_quantize(q1, input.weight, residual, out, in, input.codec);
  struct Best {
    low_rank::QuantizedBranch branch;
    std::vector<float> residual_input;  // W - Q2(B_t), which the stored residual quantizes
    double squared_error, branch_error;
  };
  std::optional<Best> best;
  for (int t = 1; t <= iterations; ++t) {
    const low_rank::Factors f = low_rank::svd_factors(low_rank::minus(input.weight, residual), out, in, rank, svd);
    low_rank::QuantizedBranch branch = low_rank::quantize_branch(f, q2, input.codec);
    std::vector<float> residual_input = low_rank::minus(input.weight, branch.product);
    fake_quantize(q1, residual_input, residual, out, in, input.codec);  // R_{t+1}
    const double error = low_rank::squared_weight_error(input.weight, residual, branch.product);
    if (!std::isfinite(error)) throw Error(std::string(input.name) + ": loftq's weight error is not finite");
    if (!best || error < best->squared_error) {
      const double branch_error = low_rank::branch_quant_error(f, branch);
      best = Best{std::move(branch), std::move(residual_input), error, branch_error};
    } else if (early_stop) {
      break;
    }
  }
  PackedMatrix packed = pack(q1, best->residual_input, out, in, input.codec);
  return low_rank::assemble(input, std::move(best->branch), std::move(packed), best->branch_error);
}

}  // namespace loraq::methods
