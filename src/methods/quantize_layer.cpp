// Running a method on one layer, and the weight a quantized layer stands for.
#include <chrono>
#include <algorithm>
#include <cmath>
#include <limits>

#include "loraq/error.hpp"
#include "loraq/isa.hpp"
#include "loraq/linalg.hpp"
#include "loraq/methods.hpp"
#include "loraq/quantized_layer.hpp"
#include "methods/low_rank_branch.hpp"
#include "methods/smoothing.hpp"

namespace loraq {
namespace {

std::size_t stored_bytes(const PackedMatrix& p) {
  return p.codes.size() + p.scales.size() + (format_info(p.format).tensor_scale ? sizeof(float) : 0);
}

// 10 log10(||Y||^2 / ||Y - Y_q||^2) over the activation rows: Y = X W^T, Y_q what the layer computes.
double output_sqnr_db(const LayerInput& input, const QuantizedLayer& layer) {
  const methods::low_rank::LinalgThreads threads(input.codec);
  const std::vector<float> y = methods::reference_output(input),
                           yq = methods::quantized_output(layer, input.activations, input.activation_rows,
                                                          *input.recipe, input.codec);
  double signal = 0, noise = 0;
  for (std::size_t i = 0; i < y.size(); ++i)
    signal += double(y[i]) * y[i], noise += (double(y[i]) - yq[i]) * (double(y[i]) - yq[i]);
  if (noise == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

// Runs the method on W diag(s) and keeps s (quantized_layer.hpp, methods/smoothing.cpp).
QuantizedLayer run_smoothed(const MethodInfo& method, const LayerInput& input) {
  const LayerRecipe::Smoothing& spec = *input.recipe->smoothing;
  const std::string name(input.name);
  if (input.activation_absmax.size() != std::size_t(input.in_features))
    throw Error(name + ": the recipe smooths this layer but no activation statistics were given (input_absmax, [" +
                std::to_string(input.in_features) + "]): pass --activations FILE (docs/activations.md)");
  if ((!spec.alpha || !spec.beta) && input.activation_rows < 1)
    throw Error(name + ": smoothing with alpha or beta 'auto' searches on captured input rows (input_rows), and "
                       "none were given: pass --activations FILE with rows, or fix alpha and beta in the recipe");
  const methods::low_rank::LinalgThreads threads(input.codec);
  methods::SmoothingChoice choice = methods::choose_smoothing(input);
  std::vector<float> w(input.weight.begin(), input.weight.end());
  for (std::int64_t o = 0; o < input.out_features; ++o)
    for (std::int64_t j = 0; j < input.in_features; ++j)
      w[std::size_t(o * input.in_features + j)] *= choice.factors[std::size_t(j)];
  LayerInput smoothed = input;
  smoothed.weight = w;
  QuantizedLayer layer = method.run(smoothed);
  layer.smooth = std::move(choice.factors);
  layer.metrics.smoothing_alpha = choice.alpha;
  layer.metrics.smoothing_beta = choice.beta;
  return layer;
}

}  // namespace

std::vector<float> effective_weight(const QuantizedLayer& layer) {
  std::vector<float> w = unpack(layer.residual);
  const std::int64_t out = layer.out_features, in = layer.in_features;
  if (layer.branch) {
    const std::vector<float> down = unpack(layer.branch->down), up = unpack(layer.branch->up);
    const std::int64_t rank = layer.branch->down.rows;
#pragma omp parallel for schedule(static)
    for (std::int64_t o = 0; o < out; ++o) {
      float* row = w.data() + o * in;
      for (std::int64_t k = 0; k < rank; ++k) {  // fixed order: the same bytes whatever the threads
        const float a = up[std::size_t(o * rank + k)];
        const float* d = down.data() + k * in;
        for (std::int64_t j = 0; j < in; ++j) row[j] += a * d[j];
      }
    }
  }
  if (!layer.smooth.empty()) {  // W' = W diag(s) was quantized; the original space divides s back out
    for (std::int64_t o = 0; o < out; ++o)
      for (std::int64_t j = 0; j < in; ++j) w[std::size_t(o * in + j)] /= layer.smooth[std::size_t(j)];
  }
  return w;
}

QuantizedLayer quantize_layer(const LayerInput& input) {
  if (!input.recipe) throw Error(std::string(input.name) + ": no recipe");
  if (input.weight.size() != std::size_t(input.out_features * input.in_features))
    throw Error(std::string(input.name) + ": weight holds " + std::to_string(input.weight.size()) + " values, shape says " +
                std::to_string(input.out_features) + " x " + std::to_string(input.in_features));
  // Before the methods' threads: the codecs would find out inside an OpenMP region, which an
  // exception cannot leave (the process would abort).
  if (input.codec.isa && !isa_available(*input.codec.isa))
    throw Error(std::string(input.name) + ": instruction set " + std::string(isa_name(*input.codec.isa)) +
                " is not available on this CPU or build");
  const MethodInfo& method = method_info(input.recipe->method);
  const auto start = std::chrono::steady_clock::now();
  QuantizedLayer layer = input.recipe->smoothing ? run_smoothed(method, input) : method.run(input);
  layer.metrics.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const std::vector<float> w_eff = effective_weight(layer);
  // Eight running sums in a fixed order: the same result whatever the threads, and a loop the
  // compiler vectorizes (a single running double sum it may not reorder).
  constexpr std::size_t kLanes = 8;
  double signal_lanes[kLanes] = {}, noise_lanes[kLanes] = {};
  const std::size_t n = w_eff.size(), whole = n / kLanes * kLanes;
  for (std::size_t i = 0; i < whole; i += kLanes)
    for (std::size_t l = 0; l < kLanes; ++l) {
      const double w = input.weight[i + l], d = double(w_eff[i + l]) - w;
      signal_lanes[l] += w * w;
      noise_lanes[l] += d * d;
    }
  for (std::size_t i = whole; i < n; ++i) {
    const double w = input.weight[i], d = double(w_eff[i]) - w;
    signal_lanes[0] += w * w;
    noise_lanes[0] += d * d;
  }
  double signal = 0, noise = 0;
  for (std::size_t l = 0; l < kLanes; ++l) signal += signal_lanes[l], noise += noise_lanes[l];
  layer.metrics.relative_error = signal > 0 ? std::sqrt(noise / signal) : std::sqrt(noise);
  std::size_t bytes = stored_bytes(layer.residual) + layer.smooth.size() * sizeof(float);
  if (layer.branch) bytes += stored_bytes(layer.branch->down) + stored_bytes(layer.branch->up);
  layer.metrics.bits_per_value = 8.0 * double(bytes) / double(input.out_features * input.in_features);
  if (input.activation_rows > 0) layer.metrics.output_sqnr_db = output_sqnr_db(input, layer);
  return layer;
}

}  // namespace loraq
