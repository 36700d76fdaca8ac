// What the SVD-based methods (svd_lowrank, lorc, loftq) share: the branch from a truncated SVD, its
// quantization with Q2, and the residual Q1(W - Q2(B)). Internal to src/methods.
//
// Conventions (quantized_layer.hpp): W is [out, in]; B = up @ down with up [out, rank] and down
// [rank, in]; Q2(B) means Q2(up) @ Q2(down), the branch as stored and as the kernels compute it.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "loraq/format.hpp"
#include "loraq/linalg.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq::methods::low_rank {

struct Factors {
  std::int64_t out = 0, in = 0, rank = 0;
  std::vector<float> up;    // [out, rank]
  std::vector<float> down;  // [rank, in]
};

// The rank-`rank` truncated SVD X ~ U S V^T as up = U sqrt(S), down = sqrt(S) V^T.
//
// Why the square-root split: it is the balanced factorization (column k of up and row k of down
// both have norm sqrt(s_k), the least ||up||^2 + ||down||^2 of any diagonal rescaling), so Q2 meets
// factors of one scale and its error splits evenly between them; with S in one factor, that factor's
// blocks along the rank (up's rows are its blocks) would mix values s_1 / s_r apart and its small
// components would fall to the bottom of a shared-scale block. It is also loraq's initialization
// (loraq_impl.hpp, svd_init), so the methods start from the same factors.
Factors svd_factors(std::span<const float> x, std::int64_t out, std::int64_t in, std::int64_t rank,
                    const linalg::SvdOptions& options);

// The stored branch and the product its quantized factors give.
struct QuantizedBranch {
  LowRankBranch packed;        // Q2(down) [rank, in], Q2(up) [out, rank]
  std::vector<float> product;  // Q2(up) @ Q2(down), [out, in] (linalg::gemm)
};
QuantizedBranch quantize_branch(const Factors& f, Format q2, const QuantOptions& codec);

// W - B, elementwise, [out, in].
std::vector<float> minus(std::span<const float> w, std::span<const float> b);

// ||Q2(up) Q2(down) - up down||_F: what quantizing the factors costs (LayerMetrics).
double branch_quant_error(const Factors& f, const QuantizedBranch& q);

// sum (W - R - B)^2 in double, with R the unpacked residual: the squared weight error of the layer
// R + B stands for.
double squared_weight_error(std::span<const float> w, std::span<const float> residual, std::span<const float> b);

// The branch rank of a layer (LayerRecipe::branch_rank), checked against min(out, in).
std::int64_t branch_rank(const LayerInput& input);

// A method parameter: the recipe's value, else the method table's default (recipes fill every
// default in; a LayerRecipe built in code may not).
double param(const LayerRecipe& recipe, std::string_view name);

// The SVD options of a recipe: its seed, and full LAPACK when the method's `exact_svd` parameter is
// set, else linalg's automatic choice (randomized for ranks small against the shape).
linalg::SvdOptions svd_options(const LayerRecipe& recipe);

// The layer: branch as packed, residual Q1(W - Q2(B)) packed, branch_quant_error filled in.
QuantizedLayer assemble(const LayerInput& input, QuantizedBranch&& branch, PackedMatrix&& residual,
                        double branch_error);

// Sets this thread's linalg thread count to the codec's (the pipeline gives each layer in flight
// its share of the cores) for the lifetime of the guard, and restores the previous count.
class LinalgThreads {
 public:
  explicit LinalgThreads(const QuantOptions& codec);
  ~LinalgThreads();
  LinalgThreads(const LinalgThreads&) = delete;
  LinalgThreads& operator=(const LinalgThreads&) = delete;

 private:
  int previous_;
};

}  // namespace loraq::methods::low_rank
