// Smoothing and activation-quantized output metrics (methods/smoothing.cpp through quantize_layer):
// the smoothing vector is the formula's, the output SQNR equals a double-precision recomputation of
// Qa1(X / s) P^T + (Qa2(X / s) down^T) up^T, searched smoothing beats none at W4A4 on inputs with
// outlier channels, and missing activations are refused by name. Recipe keys and bench specs too.
#include <gtest/gtest.h>

#include <cmath>

#include "dit_weights.hpp"
#include "loraq/bench.hpp"
#include "loraq/quantized_layer.hpp"
#include "loraq/recipe.hpp"
#include "test_support.hpp"

namespace {

using loraq::Format;
using loraq::LayerRecipe;
using loraq::testing::dit_weight;
using loraq::testing::error_of;

constexpr std::int64_t kOut = 96, kIn = 128, kRows = 64;

// Activations with a few outlier channels (as DiT inputs have), and their per-channel absmax.
struct Activations {
  std::vector<float> rows, absmax;
};
Activations outlier_activations() {
  Activations a;
  a.rows = dit_weight(kRows, kIn, 9);
  for (std::int64_t r = 0; r < kRows; ++r)
    for (std::int64_t j = 0; j < kIn; j += 16) a.rows[std::size_t(r * kIn + j)] *= 30.0f;
  a.absmax.assign(std::size_t(kIn), 0.0f);
  for (std::int64_t r = 0; r < kRows; ++r)
    for (std::int64_t j = 0; j < kIn; ++j)
      a.absmax[std::size_t(j)] = std::max(a.absmax[std::size_t(j)], std::fabs(a.rows[std::size_t(r * kIn + j)]));
  return a;
}

LayerRecipe recipe(const std::string& spec) { return loraq::parse_bench_config(spec).recipe; }

// quantize_layer on `w` with the captured rows and absmax of `a` (none when null; the absmax alone
// when `rows` is false).
loraq::QuantizedLayer run(const std::vector<float>& w, const LayerRecipe& r, const Activations* a, bool rows = true) {
  loraq::LayerInput input;
  input.name = "layer.weight";
  input.weight = w;
  input.out_features = kOut;
  input.in_features = kIn;
  input.recipe = &r;
  if (a) {
    if (rows) input.activations = a->rows, input.activation_rows = kRows;
    input.activation_absmax = a->absmax;
  }
  return loraq::quantize_layer(input);
}

std::vector<float> dequantized(const loraq::PackedMatrix& p) {
  std::vector<float> v(std::size_t(p.rows * p.cols));
  loraq::unpack(p, v);
  return v;
}

// Qa(X / s) in float, per-token blocks, through the format library (checked against ml_dtypes and
// torchao by the format tests).
std::vector<float> quantized_input(const Activations& a, const std::vector<float>& s, std::optional<Format> f) {
  std::vector<float> x = a.rows;
  for (std::int64_t r = 0; r < kRows; ++r)
    for (std::int64_t j = 0; j < kIn; ++j) x[std::size_t(r * kIn + j)] /= s.empty() ? 1.0f : s[std::size_t(j)];
  if (f) loraq::fake_quantize(*f, x, x, kRows, kIn);
  return x;
}

double sqnr_db(const std::vector<float>& w, const loraq::QuantizedLayer& q, const Activations& a, const LayerRecipe& r) {
  const std::vector<float> p = dequantized(q.residual), x1 = quantized_input(a, q.smooth, r.residual_activation),
                           x2 = quantized_input(a, q.smooth, r.branch_activation);
  std::vector<float> down, up;
  std::int64_t rank = 0;
  if (q.branch) down = dequantized(q.branch->down), up = dequantized(q.branch->up), rank = q.branch->down.rows;
  double signal = 0, noise = 0;
  for (std::int64_t n = 0; n < kRows; ++n) {
    std::vector<double> t(std::size_t(rank), 0.0);
    for (std::int64_t k = 0; k < rank; ++k)
      for (std::int64_t j = 0; j < kIn; ++j) t[std::size_t(k)] += double(x2[std::size_t(n * kIn + j)]) * down[std::size_t(k * kIn + j)];
    for (std::int64_t o = 0; o < kOut; ++o) {
      double y = 0, yq = 0;
      for (std::int64_t j = 0; j < kIn; ++j) {
        y += double(a.rows[std::size_t(n * kIn + j)]) * w[std::size_t(o * kIn + j)];
        yq += double(x1[std::size_t(n * kIn + j)]) * p[std::size_t(o * kIn + j)];
      }
      for (std::int64_t k = 0; k < rank; ++k) yq += t[std::size_t(k)] * up[std::size_t(o * rank + k)];
      signal += y * y, noise += (y - yq) * (y - yq);
    }
  }
  return 10 * std::log10(signal / noise);
}

TEST(Smoothing, FixedAlphaBetaIsTheFormulaAndTheSqnrIsTheLayersOutput) {
  const std::vector<float> w = dit_weight(kOut, kIn, 1);
  const Activations a = outlier_activations();
  LayerRecipe r = recipe("svd_lowrank:sint4:mxint8:r8:a1=sint4:a2=mxint8");
  r.smoothing = LayerRecipe::Smoothing{0.5, 0.5};
  const loraq::QuantizedLayer q = run(w, r, &a);
  ASSERT_EQ(q.smooth.size(), std::size_t(kIn));
  for (std::int64_t j = 0; j < kIn; ++j) {
    float colmax = 0;
    for (std::int64_t o = 0; o < kOut; ++o) colmax = std::max(colmax, std::fabs(w[std::size_t(o * kIn + j)]));
    EXPECT_NEAR(q.smooth[std::size_t(j)], std::sqrt(double(a.absmax[std::size_t(j)])) / std::sqrt(double(colmax)),
                1e-5 * q.smooth[std::size_t(j)]);
  }
  EXPECT_EQ(q.metrics.smoothing_alpha, 0.5);
  EXPECT_EQ(q.metrics.smoothing_beta, 0.5);
  ASSERT_TRUE(q.metrics.output_sqnr_db);
  EXPECT_NEAR(*q.metrics.output_sqnr_db, sqnr_db(w, q, a, r), 1e-3);
  // Without smoothing, the same recipe: the SQNR still counts the activation formats.
  r.smoothing.reset();
  const loraq::QuantizedLayer plain = run(w, r, &a);
  EXPECT_TRUE(plain.smooth.empty());
  EXPECT_NEAR(*plain.metrics.output_sqnr_db, sqnr_db(w, plain, a, r), 1e-3);
}

TEST(Smoothing, SearchedSmoothingBeatsNoneAtW4A4) {
  const std::vector<float> w = dit_weight(kOut, kIn, 2);
  const Activations a = outlier_activations();
  for (const char* spec : {"svd_lowrank:sint4:fp16:r8:a1=sint4:a2=sint4", "rtn:mxint4:a1=mxint4"}) {
    LayerRecipe r = recipe(spec);
    const double none = *run(w, r, &a).metrics.output_sqnr_db;
    r.smoothing = LayerRecipe::Smoothing{};
    const loraq::QuantizedLayer q = run(w, r, &a);
    EXPECT_GT(*q.metrics.output_sqnr_db, none + 1.0) << spec;  // at least 1 dB better
    const double alpha = *q.metrics.smoothing_alpha, beta = *q.metrics.smoothing_beta;
    EXPECT_NEAR(alpha * 20, std::round(alpha * 20), 1e-9) << spec;  // on the grid
    EXPECT_TRUE(beta == 0 || std::fabs(beta - (1 - alpha)) < 1e-12) << spec;
  }
}

TEST(Smoothing, MissingActivationsAreNamed) {
  const std::vector<float> w = dit_weight(kOut, kIn, 3);
  LayerRecipe r = recipe("rtn:sint4");
  r.smoothing = LayerRecipe::Smoothing{0.5, 0.5};
  EXPECT_NE(error_of([&] { run(w, r, nullptr); }).find("layer.weight: the recipe smooths this layer but no activation "
                                                       "statistics"),
            std::string::npos);
  r.smoothing = LayerRecipe::Smoothing{};
  const Activations a = outlier_activations();
  EXPECT_NE(error_of([&] { run(w, r, &a, /*rows=*/false); }).find("searches on captured input rows"), std::string::npos);
}

TEST(Smoothing, RecipeKeysAndBenchSpecs) {
  const loraq::Recipe rec = loraq::parse_recipe(
      "name: s\nmethod: svd_lowrank\nbranch: {rank: 8}\nsmoothing: {alpha: auto, beta: 0.25}\n"
      "overrides:\n  - match: 'a.*'\n    smoothing: off\n",
      "s.yaml");
  ASSERT_TRUE(rec.defaults.smoothing);
  EXPECT_FALSE(rec.defaults.smoothing->alpha);
  EXPECT_EQ(rec.defaults.smoothing->beta, 0.25);
  EXPECT_FALSE(rec.for_layer("a.weight").smoothing);
  EXPECT_NE(rec.to_json().find(R"("smoothing":{"alpha":"auto","beta":0.25})"), std::string::npos) << rec.to_json();
  EXPECT_NE(error_of([] { loraq::parse_recipe("name: s\nsmoothing: {alpha: 2}\n", "s.yaml"); })
                .find("s.yaml:2: smoothing.alpha: expected auto or a number in [0, 1], got 2"),
            std::string::npos);
  EXPECT_NE(error_of([] { loraq::parse_recipe("name: s\nsmoothing: {gamma: 1}\n", "s.yaml"); }).find("valid keys: alpha, beta"),
            std::string::npos);
  const LayerRecipe b = recipe("loraq:sint4:mxint8:b512:smooth:a1=sint4:a2=mxint8");
  EXPECT_TRUE(b.smoothing && !b.smoothing->alpha && !b.smoothing->beta);
  EXPECT_EQ(b.residual_activation, Format::sint4);
  EXPECT_EQ(b.branch_activation, Format::mxint8);
  EXPECT_NE(error_of([] { recipe("rtn:sint4:a2=sint4"); }).find("no low-rank branch"), std::string::npos);
}

}  // namespace
