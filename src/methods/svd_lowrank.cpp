// svd_lowrank: SVDQuant's weight path (Li et al. 2025) without its smoothing: the branch is the
// rank-r truncated SVD of W itself, B = U S V^T, stored in Q2 (fp16 in SVDQuant), and the residual
// is Q1(W - Q2(B)).
//
// The residual subtracts the branch as stored, Q2(up) Q2(down), not the exact B: what Q2 loses on
// the factors then lands in the residual, which Q1 quantizes with everything else, instead of
// being lost. The effective weight is Q1(W - Q2(B)) + Q2(B) (effective_weight).
#include "methods/low_rank_branch.hpp"
#include "methods/methods.hpp"

namespace loraq::methods {

QuantizedLayer svd_lowrank(const LayerInput& input) {
  const LayerRecipe& recipe = *input.recipe;
  const low_rank::LinalgThreads threads(input.codec);
  const std::int64_t rank = low_rank::branch_rank(input);
  const low_rank::Factors f =
      low_rank::svd_factors(input.weight, input.out_features, input.in_features, rank, low_rank::svd_options(recipe));
  low_rank::QuantizedBranch branch = low_rank::quantize_branch(f, recipe.branch_format, input.codec);
  const double branch_error = low_rank::branch_quant_error(f, branch);
  PackedMatrix residual = pack(recipe.residual_format, low_rank::minus(input.weight, branch.product),
                               input.out_features, input.in_features, input.codec);
  return low_rank::assemble(input, std::move(branch), std::move(residual), branch_error);
}

}  // namespace loraq::methods
