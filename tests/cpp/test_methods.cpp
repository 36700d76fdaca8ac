// The SVD-based methods (src/methods/svd_lowrank.cpp, lorc.cpp, loftq.cpp): each layer against a
// recomputation written here from the method's definition, the error order theory predicts on
// DiT-like weights (heavy tails, outlier input channels), loftq's best-iterate rule, determinism
// across thread counts, and bad ranks.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "dit_weights.hpp"
#include "loraq/error.hpp"
#include "loraq/format.hpp"
#include "loraq/isa.hpp"
#include "loraq/linalg.hpp"
#include "loraq/methods.hpp"
#include "loraq/quantized_layer.hpp"
#include "loraq/recipe.hpp"

namespace loraq {
namespace {

constexpr std::uint64_t kSeed = 20250611;

// A recipe as load_recipe gives it: every parameter of the method present, at its default.
LayerRecipe recipe_for(const std::string& method, Format q1, Format q2, int rank, std::uint64_t seed = 7) {
  LayerRecipe r;
  r.method = method;
  r.residual_format = q1;
  r.branch_format = q2;
  r.rank = rank;
  r.seed = seed;
  for (const MethodParam& p : method_info(method).params) r.params[std::string(p.name)] = p.default_value;
  return r;
}

struct Layer {
  std::int64_t out, in;
  std::vector<float> w;
};

Layer dit_layer(std::int64_t out, std::int64_t in, std::uint64_t seed) {
  return {out, in, testing::dit_weight(out, in, seed)};
}

QuantizedLayer run(const Layer& l, const LayerRecipe& recipe, int threads = 0, std::optional<Isa> isa = std::nullopt) {
  LayerInput input;
  input.name = "test.weight";
  input.weight = l.w;
  input.out_features = l.out;
  input.in_features = l.in;
  input.recipe = &recipe;
  input.codec = {Rounding::nearest_even, isa, threads};
  return quantize_layer(input);
}

std::vector<float> fq(Format f, const std::vector<float>& x, std::int64_t rows, std::int64_t cols) {
  std::vector<float> y(x.size());
  fake_quantize(f, x, y, rows, cols);
  return y;
}

std::vector<float> unpacked(const PackedMatrix& p) {
  std::vector<float> v(std::size_t(p.rows * p.cols));
  unpack(p, v);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(b[i])) return false;
  return true;
}

// ---- the recomputation ---------------------------------------------------------------------------

// The branch the definitions give: top-r SVD of `target` (the options a recipe's defaults select:
// linalg's automatic choice with the recipe's seed), singular values split as square roots, each
// factor rounded by Q2, and their product.
struct Expected {
  std::vector<float> up_q, down_q;  // Q2(U sqrt(S)) [out, r], Q2(sqrt(S) V^T) [r, in]
  std::vector<float> product;       // up_q @ down_q (linalg::gemm, tested against a naive loop)
  std::vector<float> residual;      // Q1(W - product)
};

Expected expected_branch(const Layer& l, const std::vector<float>& target, const LayerRecipe& r) {
  const std::int64_t rank = *r.rank;
  linalg::SvdOptions options;
  options.seed = r.seed;
  const linalg::Svd svd = linalg::truncated_svd(target, l.out, l.in, rank, options);
  std::vector<float> up(std::size_t(l.out * rank)), down(std::size_t(rank * l.in));
  for (std::int64_t k = 0; k < rank; ++k) {
    const float root = std::sqrt(svd.s[std::size_t(k)]);
    for (std::int64_t o = 0; o < l.out; ++o) up[std::size_t(o * rank + k)] = svd.u[std::size_t(o * rank + k)] * root;
    for (std::int64_t j = 0; j < l.in; ++j) down[std::size_t(k * l.in + j)] = root * svd.vt[std::size_t(k * l.in + j)];
  }
  Expected e{fq(r.branch_format, up, l.out, rank), fq(r.branch_format, down, rank, l.in), {}, {}};
  e.product.resize(l.w.size());
  linalg::gemm(false, false, l.out, l.in, rank, 1.0f, e.up_q.data(), rank, e.down_q.data(), l.in, 0.0f,
               e.product.data(), l.in);
  std::vector<float> residual_input(l.w.size());
  for (std::size_t i = 0; i < l.w.size(); ++i) residual_input[i] = l.w[i] - e.product[i];
  e.residual = fq(r.residual_format, residual_input, l.out, l.in);
  return e;
}

double norm2(const std::vector<float>& x) {
  double sum = 0;
  for (float v : x) sum += double(v) * double(v);
  return sum;
}

double squared_error(const Layer& l, const Expected& e) {
  double sum = 0;
  for (std::size_t i = 0; i < l.w.size(); ++i) {
    const double d = double(l.w[i]) - double(e.residual[i]) - double(e.product[i]);
    sum += d * d;
  }
  return sum;
}

// The layer holds exactly the expected factors and residual, and effective_weight is their sum
// R + Q2(up) Q2(down), formed here in double, up to float rounding of its rank-term sums.
void check_layer(const Layer& l, const QuantizedLayer& q, const Expected& e) {
  ASSERT_TRUE(q.branch.has_value());
  const std::int64_t rank = q.branch->down.rows;
  EXPECT_EQ(q.branch->up.rows, l.out);
  EXPECT_EQ(q.branch->up.cols, rank);
  EXPECT_EQ(q.branch->down.cols, l.in);
  EXPECT_TRUE(same_bits(unpacked(q.branch->up), e.up_q)) << "up factor";
  EXPECT_TRUE(same_bits(unpacked(q.branch->down), e.down_q)) << "down factor";
  EXPECT_TRUE(same_bits(unpacked(q.residual), e.residual)) << "residual";
  const std::vector<float> eff = effective_weight(q);
  std::size_t bad = 0;
  for (std::int64_t o = 0; o < l.out; ++o)
    for (std::int64_t j = 0; j < l.in; ++j) {
      double b = 0, magnitude = std::abs(double(e.residual[std::size_t(o * l.in + j)]));
      for (std::int64_t k = 0; k < rank; ++k) {
        const double t = double(e.up_q[std::size_t(o * rank + k)]) * double(e.down_q[std::size_t(k * l.in + j)]);
        b += t;
        magnitude += std::abs(t);
      }
      const double want = double(e.residual[std::size_t(o * l.in + j)]) + b;
      if (std::abs(double(eff[std::size_t(o * l.in + j)]) - want) > double(rank + 2) * 0x1p-24 * magnitude) ++bad;
    }
  EXPECT_EQ(bad, 0u) << "entries of effective_weight off R + Q2(up) Q2(down)";
}

// loftq from its definition: R = Q1(W) or 0 (compensate); B_t = SVD_r(W - R); R = Q1(W - Q2(B_t));
// keep the least error.
Expected expected_loftq(const Layer& l, const LayerRecipe& r, int iterations, bool early_stop, bool compensate,
                        std::vector<double>* errors = nullptr) {
  std::vector<float> residual = compensate ? fq(r.residual_format, l.w, l.out, l.in) : std::vector<float>(l.w.size());
  std::optional<Expected> best;
  double best_error = 0;
  for (int t = 0; t < iterations; ++t) {
    std::vector<float> target(l.w.size());
    for (std::size_t i = 0; i < l.w.size(); ++i) target[i] = l.w[i] - residual[i];
    Expected e = expected_branch(l, target, r);
    const double error = squared_error(l, e);
    if (errors) errors->push_back(error);
    residual = e.residual;
    if (!best || error < best_error) {
      best = std::move(e);
      best_error = error;
    } else if (early_stop) {
      break;
    }
  }
  return *best;
}

// ---- tests ---------------------------------------------------------------------------------------

TEST(Methods, TheTableListsTheSvdMethodsWithTheirParameters) {
  for (const char* name : {"svd_lowrank", "lorc", "loftq"}) {
    const MethodInfo& m = method_info(name);
    EXPECT_TRUE(m.uses_branch) << name;
    EXPECT_FALSE(m.needs_activations) << name;
    ASSERT_NE(find_param(m, "exact_svd"), nullptr) << name;
  }
  const MethodInfo& loftq = method_info("loftq");
  ASSERT_NE(find_param(loftq, "iterations"), nullptr);
  EXPECT_EQ(find_param(loftq, "iterations")->min_value, 1);  // at least one iterate to keep
  ASSERT_NE(find_param(loftq, "early_stop"), nullptr);
}

TEST(Methods, SvdLowrankIsTheTruncatedSvdOfW) {
  // Rank 8 takes linalg's randomized SVD (sketch 18 <= 160 / 4), rank 32 the full one.
  const Layer l = dit_layer(160, 256, kSeed);
  for (const auto& [q2, rank] : {std::pair{Format::fp16, 32}, {Format::mxfp4, 32}, {Format::fp16, 8}}) {
    SCOPED_TRACE(std::string(format_info(q2).name) + " rank " + std::to_string(rank) + " seed " +
                 std::to_string(kSeed));
    const LayerRecipe r = recipe_for("svd_lowrank", Format::sint4, q2, rank);
    const QuantizedLayer q = run(l, r);
    const Expected e = expected_branch(l, l.w, r);
    check_layer(l, q, e);
    EXPECT_NEAR(q.metrics.relative_error, std::sqrt(squared_error(l, e) / norm2(l.w)), 1e-6);
  }
}

TEST(Methods, LorcIsTheTruncatedSvdOfQ1sError) {
  const Layer l = dit_layer(160, 256, kSeed + 1);
  for (const auto& [q1, rank] : {std::pair{Format::sint4, 32}, {Format::mxfp4, 32}, {Format::sint4, 8}}) {
    SCOPED_TRACE(std::string(format_info(q1).name) + " rank " + std::to_string(rank) + " seed " +
                 std::to_string(kSeed + 1));
    const LayerRecipe r = recipe_for("lorc", q1, Format::fp16, rank);
    const std::vector<float> q1w = fq(q1, l.w, l.out, l.in);
    std::vector<float> error(l.w.size());
    for (std::size_t i = 0; i < l.w.size(); ++i) error[i] = l.w[i] - q1w[i];
    check_layer(l, run(l, r), expected_branch(l, error, r));
  }
}

TEST(Methods, LoftqFollowsItsDefinitionAndKeepsTheBestIterate) {
  const Layer l = dit_layer(160, 256, kSeed + 2);
  LayerRecipe r = recipe_for("loftq", Format::sint4, Format::mxint8, 32);
  // Defaults: from svd_lowrank's branch, up to 100 alternations, stopping at the first that does
  // not improve.
  check_layer(l, run(l, r), expected_loftq(l, r, 100, true, false));
  // Without early stopping, the best of a fixed number of iterates, wherever it falls.
  for (bool compensate : {false, true}) {
    SCOPED_TRACE("compensate " + std::to_string(compensate));
    r.params["iterations"] = 6;
    r.params["early_stop"] = 0;
    r.params["compensate"] = compensate;
    std::vector<double> errors;
    const Expected best = expected_loftq(l, r, 6, false, compensate, &errors);
    ASSERT_EQ(errors.size(), 6u);
    const QuantizedLayer q = run(l, r);
    check_layer(l, q, best);
    EXPECT_NEAR(q.metrics.relative_error, std::sqrt(*std::min_element(errors.begin(), errors.end()) / norm2(l.w)),
                1e-6);
    // One iterate is the layer loftq starts from: svd_lowrank's, or lorc's with compensate
    // (LoftQ's initialization: the branch fits Q1(W)'s error).
    r.params["iterations"] = 1;
    const QuantizedLayer one = run(l, r);
    const QuantizedLayer start =
        run(l, recipe_for(compensate ? "lorc" : "svd_lowrank", Format::sint4, Format::mxint8, 32));
    EXPECT_EQ(one.residual.codes, start.residual.codes);
    EXPECT_EQ(one.residual.scales, start.residual.scales);
    EXPECT_EQ(one.branch->up.codes, start.branch->up.codes);
    EXPECT_EQ(one.branch->down.codes, start.branch->down.codes);
  }
}

TEST(Methods, ErrorsOrderedAsTheoryPredicts) {
  // DiT-like weights: Laplace tails and 1 input channel in 64 eight times larger. The outlier
  // channels make a few large singular directions that an fp16 rank-32 branch takes out of the
  // residual (so sint4 blocks are no longer scaled by them); lorc's branch removes part of Q1's
  // error; loftq starts at one of them and only keeps improvements.
  for (const auto& [out, in] : {std::pair<std::int64_t, std::int64_t>{256, 512}, {512, 256}}) {
    const Layer l = dit_layer(out, in, kSeed + 3 + std::uint64_t(out));
    SCOPED_TRACE(std::to_string(out) + "x" + std::to_string(in) + " seed " +
                 std::to_string(kSeed + 3 + std::uint64_t(out)));
    const double rtn = run(l, recipe_for("rtn", Format::sint4, Format::fp16, 32)).metrics.relative_error;
    const double svd = run(l, recipe_for("svd_lowrank", Format::sint4, Format::fp16, 32)).metrics.relative_error;
    const double lorc = run(l, recipe_for("lorc", Format::sint4, Format::fp16, 32)).metrics.relative_error;
    const double loftq = run(l, recipe_for("loftq", Format::sint4, Format::fp16, 32)).metrics.relative_error;
    LayerRecipe from_lorc = recipe_for("loftq", Format::sint4, Format::fp16, 32);
    from_lorc.params["compensate"] = 1;
    const double loftq_lorc = run(l, from_lorc).metrics.relative_error;
    EXPECT_LT(svd, rtn);
    EXPECT_LT(lorc, rtn);
    EXPECT_LE(loftq, lorc);
    EXPECT_LE(loftq, svd);        // by construction: its first iterate is svd_lowrank's layer
    EXPECT_LE(loftq_lorc, lorc);  // by construction: its first iterate is lorc's layer
    std::printf("  %lldx%lld sint4 + fp16 r32: rtn %.5f  svd_lowrank %.5f  lorc %.5f  loftq %.5f (from lorc %.5f)\n",
                (long long)out, (long long)in, rtn, svd, lorc, loftq, loftq_lorc);
  }
}

TEST(Methods, SameBytesForOneAndTwoThreads) {
  const Layer l = dit_layer(192, 320, kSeed + 4);
  const int saved = omp_get_max_threads();
  for (const auto& [name, rank] : {std::pair{"svd_lowrank", 48},
                                   {"lorc", 48},
                                   {"loftq", 48},
                                   {"svd_lowrank", 16},
                                   {"lorc", 16},
                                   {"loftq", 16}}) {  // 48: full SVD; 16: randomized
    SCOPED_TRACE(std::string(name) + " rank " + std::to_string(rank));
    const LayerRecipe r = recipe_for(name, Format::mxfp4, Format::mxfp6_e2m3, rank, 11);
    omp_set_num_threads(1);
    const QuantizedLayer a = run(l, r, 1);
    omp_set_num_threads(2);
    const QuantizedLayer b = run(l, r, 2);
    const QuantizedLayer c = run(l, r, 0);
    for (const QuantizedLayer* other : {&b, &c}) {
      EXPECT_EQ(a.residual.codes, other->residual.codes);
      EXPECT_EQ(a.residual.scales, other->residual.scales);
      EXPECT_EQ(a.branch->up.codes, other->branch->up.codes);
      EXPECT_EQ(a.branch->up.scales, other->branch->up.scales);
      EXPECT_EQ(a.branch->down.codes, other->branch->down.codes);
      EXPECT_EQ(a.branch->down.scales, other->branch->down.scales);
    }
  }
  omp_set_num_threads(saved);
}

TEST(Methods, ParallelLayersGetTheSerialBytes) {
  // The quantize pipeline runs layers in an OpenMP loop (nested parallelism on); each layer must
  // come out as it does alone.
  std::vector<Layer> layers;
  for (int i = 0; i < 4; ++i) layers.push_back(dit_layer(128 + 32 * i, 192, kSeed + 10 + std::uint64_t(i)));
  const LayerRecipe r = recipe_for("loftq", Format::sint4, Format::fp16, 16);  // randomized SVDs
  std::vector<QuantizedLayer> serial, parallel(layers.size());
  for (const Layer& l : layers) serial.push_back(run(l, r, 1));
  const int saved_levels = omp_get_max_active_levels();
  omp_set_max_active_levels(2);
#pragma omp parallel for schedule(dynamic, 1) num_threads(2)
  for (std::size_t i = 0; i < layers.size(); ++i) parallel[i] = run(layers[i], r, 2);
  omp_set_max_active_levels(saved_levels);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(serial[i].residual.codes, parallel[i].residual.codes) << i;
    EXPECT_EQ(serial[i].branch->up.codes, parallel[i].branch->up.codes) << i;
    EXPECT_EQ(serial[i].branch->down.codes, parallel[i].branch->down.codes) << i;
  }
}

TEST(Methods, ExactSvdGivesTheEckartYoungBranch) {
  // exact_svd = 1 gives the Eckart-Young branch: svd_lowrank's B is then the best rank-r
  // approximation of W, whatever Q1 does afterwards.
  const Layer l = dit_layer(256, 512, kSeed + 5);
  LayerRecipe r = recipe_for("svd_lowrank", Format::sint4, Format::fp16, 16);
  r.params["exact_svd"] = 1;
  const QuantizedLayer q = run(l, r);
  const linalg::Svd svd = linalg::truncated_svd(l.w, l.out, l.in, 16, {linalg::SvdAlgorithm::full, 10, 2, 0});
  std::vector<float> up = unpacked(q.branch->up), down = unpacked(q.branch->down);
  // The fp16 factors multiply back to U S V^T within fp16 rounding (2^-11 relative per factor).
  std::vector<float> b(l.w.size()), exact(l.w.size()), us(svd.u);
  linalg::gemm(false, false, l.out, l.in, 16, 1.0f, up.data(), 16, down.data(), l.in, 0.0f, b.data(), l.in);
  for (std::int64_t o = 0; o < l.out; ++o)
    for (std::int64_t k = 0; k < 16; ++k) us[std::size_t(o * 16 + k)] *= svd.s[std::size_t(k)];
  linalg::gemm(false, false, l.out, l.in, 16, 1.0f, us.data(), 16, svd.vt.data(), l.in, 0.0f, exact.data(), l.in);
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff += (double(b[i]) - double(exact[i])) * (double(b[i]) - double(exact[i]));
    norm += double(exact[i]) * double(exact[i]);
  }
  EXPECT_LT(std::sqrt(diff / norm), 2 * 0x1p-11);
}

TEST(Methods, BadRanksThrow) {
  const Layer l = dit_layer(64, 48, kSeed + 6);
  for (const char* name : {"svd_lowrank", "lorc", "loftq"}) {
    EXPECT_THROW(run(l, recipe_for(name, Format::sint4, Format::fp16, 49)), Error) << name;  // > min(out, in)
    LayerRecipe none = recipe_for(name, Format::sint4, Format::fp16, 8);
    none.rank.reset();
    EXPECT_THROW(run(l, none), Error) << name;  // neither rank nor budget
    LayerRecipe zero = recipe_for(name, Format::sint4, Format::fp16, 0);
    EXPECT_THROW(run(l, zero), Error) << name;
  }
}

// An instruction set this CPU lacks is refused by name before the methods' threads start: the codecs
// would otherwise throw inside an OpenMP region, and the process would abort (`loraq quantize --isa
// avx512` on an AVX2 machine did).
TEST(Methods, AnUnavailableIsaIsAnErrorNotAnAbort) {
  std::optional<Isa> missing;
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (!isa_available(isa)) missing = isa;
  if (!missing) GTEST_SKIP() << "every instruction set loraq has runs on this CPU: nothing to refuse";
  const Layer l = dit_layer(64, 96, kSeed + 7);
  for (const char* name : {"svd_lowrank", "loraq"}) {
    EXPECT_THROW(
        {
          try {
            run(l, recipe_for(name, Format::mxfp4, Format::mxint8, 8), 2, missing);
          } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("test.weight: instruction set " + std::string(isa_name(*missing)) +
                                                 " is not available"),
                      std::string::npos)
                << e.what();
            throw;
          }
        },
        Error)
        << name;
  }
}

}  // namespace
}  // namespace loraq
