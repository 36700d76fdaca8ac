// The SVD-based methods' shared steps (low_rank_branch.hpp).
#include "methods/low_rank_branch.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "loraq/error.hpp"
#include "loraq/methods.hpp"

namespace loraq::methods::low_rank {

Factors svd_factors(std::span<const float> x, std::int64_t out, std::int64_t in, std::int64_t rank,
                    const linalg::SvdOptions& options) {
  const linalg::Svd svd = linalg::truncated_svd(x, out, in, rank, options);
  Factors f{out, in, rank, std::vector<float>(svd.u.size()), std::vector<float>(svd.vt.size())};
  for (std::int64_t k = 0; k < rank; ++k) {
    const float root = std::sqrt(svd.s[std::size_t(k)]);  // s >= 0 (LAPACK)
    for (std::int64_t o = 0; o < out; ++o) f.up[std::size_t(o * rank + k)] = svd.u[std::size_t(o * rank + k)] * root;
    for (std::int64_t j = 0; j < in; ++j) f.down[std::size_t(k * in + j)] = root * svd.vt[std::size_t(k * in + j)];
  }
  return f;
}

QuantizedBranch quantize_branch(const Factors& f, Format q2, const QuantOptions& codec) {
  // Blocks along the reduction dimension of each matmul (FORMATS.md): in for down, rank for up.
  QuantizedBranch q{{pack(q2, f.down, f.rank, f.in, codec), pack(q2, f.up, f.out, f.rank, codec)}, {}};
  std::vector<float> up_q(f.up.size()), down_q(f.down.size());
  unpack(q.packed.up, up_q, codec);
  unpack(q.packed.down, down_q, codec);
  q.product.resize(std::size_t(f.out * f.in));
  linalg::gemm(false, false, f.out, f.in, f.rank, 1.0f, up_q.data(), f.rank, down_q.data(), f.in, 0.0f,
               q.product.data(), f.in);
  return q;
}

std::vector<float> minus(std::span<const float> w, std::span<const float> b) {
  std::vector<float> d(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) d[i] = w[i] - b[i];
  return d;
}

double branch_quant_error(const Factors& f, const QuantizedBranch& q) {
  std::vector<float> exact(q.product.size());
  linalg::gemm(false, false, f.out, f.in, f.rank, 1.0f, f.up.data(), f.rank, f.down.data(), f.in, 0.0f, exact.data(),
               f.in);
  double sum = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    const double d = double(q.product[i]) - double(exact[i]);
    sum += d * d;
  }
  return std::sqrt(sum);
}

double squared_weight_error(std::span<const float> w, std::span<const float> residual, std::span<const float> b) {
  double sum = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double d = double(w[i]) - double(residual[i]) - double(b[i]);
    sum += d * d;
  }
  return sum;
}

std::int64_t branch_rank(const LayerInput& input) {
  const std::int64_t rank = input.recipe->branch_rank(input.in_features);
  const std::int64_t limit = std::min(input.out_features, input.in_features);
  if (rank > limit)
    throw Error(std::string(input.name) + ": branch rank " + std::to_string(rank) +
                " exceeds min(out, in) = " + std::to_string(limit) + " of its " + std::to_string(input.out_features) +
                " x " + std::to_string(input.in_features) + " weight");
  return rank;
}

double param(const LayerRecipe& recipe, std::string_view name) {
  const auto it = recipe.params.find(std::string(name));
  if (it != recipe.params.end()) return it->second;
  const MethodParam* p = find_param(method_info(recipe.method), name);
  if (!p) throw Error("method " + recipe.method + " has no parameter '" + std::string(name) + "'");
  return p->default_value;
}

linalg::SvdOptions svd_options(const LayerRecipe& recipe) {
  linalg::SvdOptions options;
  options.seed = recipe.seed;
  if (param(recipe, "exact_svd") != 0) options.algorithm = linalg::SvdAlgorithm::full;
  return options;
}

QuantizedLayer assemble(const LayerInput& input, QuantizedBranch&& branch, PackedMatrix&& residual,
                        double branch_error) {
  QuantizedLayer layer;
  layer.out_features = input.out_features;
  layer.in_features = input.in_features;
  layer.residual = std::move(residual);
  layer.branch = std::move(branch.packed);
  double w_norm2 = 0;
  for (float v : input.weight) w_norm2 += double(v) * double(v);
  layer.metrics.branch_quant_error = w_norm2 > 0 ? branch_error / std::sqrt(w_norm2) : branch_error;
  return layer;
}

LinalgThreads::LinalgThreads(const QuantOptions& codec) : previous_(linalg::blas_threads()) {
  linalg::set_blas_threads(codec.threads > 0 ? codec.threads : omp_get_max_threads());
}

LinalgThreads::~LinalgThreads() { linalg::set_blas_threads(previous_); }

}  // namespace loraq::methods::low_rank
