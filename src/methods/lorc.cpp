// lorc: ZeroQuant-V2's low-rank compensation (Yao et al. 2023), LQER's idea without activations:
// the branch approximates Q1's own error, B = rank-r truncated SVD of W - Q1(W), and the residual is
// Q1(W - Q2(B)).
//
// The residual is re-quantized rather than kept as Q1(W) (LoRC's original form), for the reason of
// svd_lowrank.cpp: it then absorbs what Q2 loses on the factors. It costs nothing in accuracy: W -
// Q2(B) = Q1(W) + (E - Q2(B)) with E = W - Q1(W), a point near Q1(W)'s grid, so re-quantizing it
// lands on Q1(W) wherever |E - Q2(B)| stays under half a step and on a nearer point elsewhere (the
// grid itself moves only when a block's largest value changes its scale).
#include "methods/low_rank_branch.hpp"
#include "methods/methods.hpp"

namespace loraq::methods {

QuantizedLayer lorc(const LayerInput& input) {
  const LayerRecipe& recipe = *input.recipe;
  const low_rank::LinalgThreads threads(input.codec);
  const std::int64_t out = input.out_features, in = input.in_features;
  const std::int64_t rank = low_rank::branch_rank(input);
  std::vector<float> error(input.weight.size());
  fake_quantize(recipe.residual_format, input.weight, error, out, in, input.codec);
  for (std::size_t i = 0; i < error.size(); ++i) error[i] = input.weight[i] - error[i];  // E = W - Q1(W)
  const low_rank::Factors f = low_rank::svd_factors(error, out, in, rank, low_rank::svd_options(recipe));
  low_rank::QuantizedBranch branch = low_rank::quantize_branch(f, recipe.branch_format, input.codec);
  const double branch_error = low_rank::branch_quant_error(f, branch);
  PackedMatrix residual =
      pack(recipe.residual_format, low_rank::minus(input.weight, branch.product), out, in, input.codec);
  return low_rank::assemble(input, std::move(branch), std::move(residual), branch_error);
}

}  // namespace loraq::methods
