// Smoothing (SmoothQuant, as SVDQuant and the paper's A.1.1 use it) and the quantized layer's output.
//
// s_j = max|X_j|^alpha / max|W_j|^beta moves activation outliers into the weight: the layer computes
// (X / s) (W diag(s))^T, which equals X W^T, but X / s quantizes better at low bits. alpha and beta
// not fixed by the recipe are chosen per layer by grid search, deepcompressor's default grid: (0, 0),
// and (a, 0) and (a, 1 - a) for a = 1/20 ... 19/20, on the output error over the captured rows,
// with activation quantization as the recipe says. Each candidate is scored with a cheap proxy of
// the recipe's method (svd_lowrank at the same formats and rank, or rtn without a branch): LoRaQ's
// 1500 optimizer steps per candidate would cost 39 times the method, and the proxy ranks the
// candidates the same way the method's residual and branch see them. The method then runs once on
// the chosen W diag(s).
#include "smoothing.hpp"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

#include "loraq/error.hpp"
#include "loraq/linalg.hpp"
#include "loraq/methods.hpp"
#include "low_rank_branch.hpp"

namespace loraq::methods {
namespace {

constexpr double kFloor = 1e-5;  // max |.| below this counts as this: no division by zero, no 0^0

std::vector<float> smoothing_vector(std::span<const float> absmax, std::span<const float> weight_colmax, double alpha,
                                    double beta) {
  std::vector<float> s(absmax.size());
  for (std::size_t j = 0; j < s.size(); ++j)
    s[j] = float(std::pow(std::max(double(absmax[j]), kFloor), alpha) /
                 std::pow(std::max(double(weight_colmax[j]), kFloor), beta));
  return s;
}

double squared_distance(std::span<const float> a, std::span<const float> b) {
  double d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return d;
}

}  // namespace

std::vector<float> reference_output(const LayerInput& input) {
  const std::int64_t n = input.activation_rows, out = input.out_features, in = input.in_features;
  std::vector<float> y(std::size_t(n * out));
  linalg::gemm(false, true, n, out, in, 1.0f, input.activations.data(), in, input.weight.data(), in, 0.0f, y.data(), out);
  return y;
}

std::vector<float> quantized_output(const QuantizedLayer& layer, std::span<const float> x, std::int64_t rows,
                                    const LayerRecipe& recipe, const QuantOptions& codec) {
  const std::int64_t in = layer.in_features, out = layer.out_features;
  std::vector<float> xs(x.begin(), x.end());
  if (!layer.smooth.empty())
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < in; ++j) xs[std::size_t(r * in + j)] /= layer.smooth[std::size_t(j)];
  // Per-token blocks: a row of X is a token, its blocks run along in_features.
  const auto activation = [&](const std::optional<Format>& f) {
    std::vector<float> q = xs;
    if (f) fake_quantize(*f, q, q, rows, in, codec);
    return q;
  };
  std::vector<float> y(std::size_t(rows * out));
  const std::vector<float> x1 = activation(recipe.residual_activation), p = unpack(layer.residual);
  linalg::gemm(false, true, rows, out, in, 1.0f, x1.data(), in, p.data(), in, 0.0f, y.data(), out);
  if (layer.branch) {
    const std::int64_t rank = layer.branch->down.rows;
    const std::vector<float> x2 = activation(recipe.branch_activation), down = unpack(layer.branch->down),
                             up = unpack(layer.branch->up);
    std::vector<float> t(std::size_t(rows * rank));
    linalg::gemm(false, true, rows, rank, in, 1.0f, x2.data(), in, down.data(), in, 0.0f, t.data(), rank);
    if (recipe.intermediate_activation) fake_quantize(*recipe.intermediate_activation, t, t, rows, rank, codec);
    linalg::gemm(false, true, rows, out, rank, 1.0f, t.data(), rank, up.data(), rank, 1.0f, y.data(), out);
  }
  return y;
}

SmoothingChoice choose_smoothing(const LayerInput& input) {
  const LayerRecipe& recipe = *input.recipe;
  const LayerRecipe::Smoothing& spec = *recipe.smoothing;
  const std::int64_t out = input.out_features, in = input.in_features;
  std::vector<float> colmax(std::size_t(in), 0.0f);
  for (std::int64_t o = 0; o < out; ++o)
    for (std::int64_t j = 0; j < in; ++j)
      colmax[std::size_t(j)] = std::max(colmax[std::size_t(j)], std::fabs(input.weight[std::size_t(o * in + j)]));

  std::vector<std::pair<double, double>> grid;
  std::vector<double> alphas = {0.0};
  for (int k = 1; k < 20; ++k) alphas.push_back(k / 20.0);
  if (spec.alpha) alphas = {*spec.alpha};
  for (const double a : alphas) {
    std::vector<double> betas = {0.0, 1.0 - a};
    if (spec.beta) betas = {*spec.beta};
    for (const double b : betas)
      if (std::find(grid.begin(), grid.end(), std::pair(a, b)) == grid.end()) grid.push_back({a, b});
  }
  SmoothingChoice best{grid[0].first, grid[0].second,
                       smoothing_vector(input.activation_absmax, colmax, grid[0].first, grid[0].second), 0.0};
  if (grid.size() == 1) return best;

  // Score every candidate with the proxy method on W diag(s).
  const bool branch = method_info(recipe.method).uses_branch;
  LayerRecipe proxy = recipe;
  proxy.method = branch ? "svd_lowrank" : "rtn";
  proxy.params.clear();
  for (const MethodParam& p : method_info(proxy.method).params) proxy.params[std::string(p.name)] = p.default_value;
  if (branch) proxy.rank = recipe.branch_rank(in), proxy.budget.reset();
  const std::vector<float> y = reference_output(input);
  std::vector<float> w(input.weight.size());
  best.output_error = -1;
  for (const auto& [alpha, beta] : grid) {
    std::vector<float> s = smoothing_vector(input.activation_absmax, colmax, alpha, beta);
    for (std::int64_t o = 0; o < out; ++o)
      for (std::int64_t j = 0; j < in; ++j)
        w[std::size_t(o * in + j)] = input.weight[std::size_t(o * in + j)] * s[std::size_t(j)];
    LayerInput candidate = input;
    candidate.weight = w;
    candidate.recipe = &proxy;
    QuantizedLayer q = method_info(proxy.method).run(candidate);
    q.smooth = s;
    const double error = squared_distance(quantized_output(q, input.activations, input.activation_rows, recipe, input.codec), y);
    if (best.output_error < 0 || error < best.output_error) best = {alpha, beta, std::move(s), error};  // ties: first
  }
  return best;
}

}  // namespace loraq::methods
