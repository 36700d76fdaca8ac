// `loraq bench` (loraq/bench.hpp) and the activation metrics: configuration specs, grids and
// parameters; a sweep's rows against direct quantize_layer calls; claims against the rows; thread
// invariance; resume; activation files and the output SQNR against a double-precision recomputation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include "dit_weights.hpp"
#include "loraq/activations.hpp"
#include "loraq/bench.hpp"
#include "loraq/io.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using loraq::BenchConfig;
using loraq::BenchOptions;
using loraq::BenchResult;
using loraq::Format;
using loraq::testing::dit_weight;
using loraq::testing::error_of;

// Float32 tensors as one safetensors file.
void write_f32(const fs::path& path, const std::map<std::string, std::pair<std::vector<std::int64_t>, std::vector<float>>>& t) {
  std::vector<loraq::io::TensorSpec> specs;
  for (const auto& [name, value] : t) specs.push_back({name, loraq::io::DType::f32, value.first});
  loraq::io::SafetensorsWriter w(path, specs);
  for (const loraq::io::TensorSpec& s : std::vector<loraq::io::TensorSpec>(w.specs())) {
    const std::vector<float>& v = t.at(s.name).second;
    w.write(s.name, std::as_bytes(std::span<const float>(v)));
  }
  w.finish();
}

struct Layer {
  std::string name;
  std::int64_t out, in;
};
const std::vector<Layer> kLayers = {{"blocks.0.attn.to_q.weight", 48, 64},
                                    {"blocks.0.ff.proj.weight", 96, 64},
                                    {"blocks.1.attn.to_q.weight", 48, 64}};

std::vector<float> layer_weight(std::size_t i) { return dit_weight(kLayers[i].out, kLayers[i].in, 100 + i); }
std::vector<float> layer_rows(std::size_t i, std::int64_t rows) {
  return dit_weight(rows, kLayers[i].in, 200 + i);  // heavy-tailed inputs are as good as any here
}

class Bench : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() / ("loraq_test_bench_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
    std::map<std::string, std::pair<std::vector<std::int64_t>, std::vector<float>>> t;
    for (std::size_t i = 0; i < kLayers.size(); ++i) t[kLayers[i].name] = {{kLayers[i].out, kLayers[i].in}, layer_weight(i)};
    t["blocks.0.attn.to_q.bias"] = {{48}, std::vector<float>(48, 0.5f)};
    write_f32(dir_ / "model.safetensors", t);
  }
  void TearDown() override { fs::remove_all(dir_); }

  BenchOptions options(const std::string& out) const {
    BenchOptions o;
    o.input = dir_ / "model.safetensors";
    o.output = dir_ / out;
    o.progress = false;
    for (const char* spec : {"rtn:sint4", "svd_lowrank:sint4:fp16:r4", "loraq:sint4:mxint8:b64"})
      o.configs.push_back(loraq::parse_bench_config(spec));
    loraq::set_bench_param(o.configs, "steps", 20);
    loraq::set_bench_param(o.configs, "rotation_steps", 10);
    return o;
  }
  static std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }

  fs::path dir_;
};

TEST(BenchConfigSpec, ParsesMethodFormatsAndSize) {
  const BenchConfig svd = loraq::parse_bench_config("svd_lowrank:sint4:fp16:r32");
  EXPECT_EQ(svd.label, "svd_lowrank:sint4:fp16:r32");
  EXPECT_EQ(svd.recipe.method, "svd_lowrank");
  EXPECT_EQ(svd.recipe.residual_format, Format::sint4);
  EXPECT_EQ(svd.recipe.branch_format, Format::fp16);
  EXPECT_EQ(svd.recipe.rank, 32);
  EXPECT_FALSE(svd.recipe.budget);
  const BenchConfig lq = loraq::parse_bench_config("loraq:mxfp4:mxfp6_e2m3:b512");
  EXPECT_EQ(lq.recipe.budget, 512.0);
  EXPECT_EQ(lq.recipe.branch_format, Format::mxfp6_e2m3);
  EXPECT_EQ(lq.recipe.params.at("steps"), 1000);  // the method table's default
  EXPECT_EQ(loraq::parse_bench_config("rtn:mxint4").recipe.residual_format, Format::mxint4);
}

TEST(BenchConfigSpec, BadSpecsNameWhatIsWrong) {
  EXPECT_NE(error_of([] { loraq::parse_bench_config("rtn"); }).find("'rtn': it has 1 fields"), std::string::npos);
  EXPECT_NE(error_of([] { loraq::parse_bench_config("loraq:sint4"); }).find("low-rank branch"), std::string::npos);
  EXPECT_NE(error_of([] { loraq::parse_bench_config("rtn:sint4:fp16:r32"); }).find("has no low-rank branch"),
            std::string::npos);
  EXPECT_NE(error_of([] { loraq::parse_bench_config("svd_lowrank:sint9:fp16:r32"); }).find("sint9"), std::string::npos);
  EXPECT_NE(error_of([] { loraq::parse_bench_config("svd_lowrank:sint4:fp16:x32"); }).find("'x32' is not rN or bN"),
            std::string::npos);
  EXPECT_NE(error_of([] { loraq::parse_bench_config("lorq:sint4"); }).find("unknown method 'lorq'"), std::string::npos);
  EXPECT_NE(error_of([] { loraq::parse_bench_config("svd_lowrank:sint4:fp16:r0"); }).find("rank"), std::string::npos);
}

TEST(BenchConfigSpec, GridAndParameters) {
  std::vector<BenchConfig> grid = loraq::bench_grid({"rtn", "svd_lowrank"}, {"sint4", "mxfp4"}, {"fp16"}, {"r8", "b512"});
  std::vector<std::string> labels;
  for (const BenchConfig& c : grid) labels.push_back(c.label);
  EXPECT_EQ(labels, (std::vector<std::string>{"rtn:sint4", "rtn:mxfp4", "svd_lowrank:sint4:fp16:r8",
                                              "svd_lowrank:sint4:fp16:b512", "svd_lowrank:mxfp4:fp16:r8",
                                              "svd_lowrank:mxfp4:fp16:b512"}));
  EXPECT_NE(error_of([] { loraq::bench_grid({"lorc"}, {"sint4"}, {"fp16"}, {}); }).find("method 'lorc' has a low-rank branch"),
            std::string::npos);

  grid.push_back(loraq::parse_bench_config("loraq:sint4:mxint8:r16"));
  loraq::set_bench_param(grid, "steps", 7);
  EXPECT_EQ(grid.back().recipe.params.at("steps"), 7);
  EXPECT_EQ(grid[0].recipe.params.count("steps"), 0u);  // rtn has no such parameter
  EXPECT_NE(error_of([&] { loraq::set_bench_param(grid, "stepz", 1); }).find("'stepz' belongs to no method"),
            std::string::npos);
  EXPECT_NE(error_of([&] { loraq::set_bench_param(grid, "steps", -1); }).find("steps=-1"), std::string::npos);
  EXPECT_NE(error_of([&] { loraq::set_bench_param(grid, "steps", 2.5); }).find("an integer"), std::string::npos);
}

// Each row is what quantize_layer gives that layer with that configuration, and the claims count
// what the rows say.
TEST_F(Bench, RowsMatchDirectCallsAndClaimsCountThem) {
  BenchOptions o = options("b");
  o.claims = {"loraq<=svd_lowrank<=rtn", "rtn<=svd_lowrank"};
  const BenchResult r = loraq::run_bench(o);
  ASSERT_EQ(r.rows.size(), kLayers.size() * 3);
  for (std::size_t l = 0; l < kLayers.size(); ++l) {
    const std::vector<float> w = layer_weight(l);
    for (std::size_t c = 0; c < 3; ++c) {
      const loraq::BenchRow& row = r.rows[l * 3 + c];
      EXPECT_EQ(row.layer, kLayers[l].name);
      EXPECT_EQ(row.config, c);
      loraq::LayerInput input;
      input.name = kLayers[l].name;
      input.weight = w;
      input.out_features = kLayers[l].out;
      input.in_features = kLayers[l].in;
      input.recipe = &r.configs[c].recipe;
      input.codec.threads = 1;
      const loraq::LayerMetrics m = loraq::quantize_layer(input).metrics;
      EXPECT_EQ(row.metrics.relative_error, m.relative_error) << row.layer << " " << r.configs[c].label;
      EXPECT_EQ(row.metrics.bits_per_value, m.bits_per_value);
      EXPECT_EQ(row.rank, c == 0 ? 0 : c == 1 ? 4 : 7);  // b64 with mxint8 (8.25 bits): floor(64 / 8.25)
    }
  }
  ASSERT_EQ(r.claims.size(), 2u);
  for (const loraq::ClaimResult& claim : r.claims) {
    EXPECT_EQ(claim.layers, kLayers.size());
    std::size_t holding = 0;
    for (std::size_t l = 0; l < kLayers.size(); ++l) {
      const double rtn = r.rows[l * 3].metrics.relative_error, svd = r.rows[l * 3 + 1].metrics.relative_error,
                   lq = r.rows[l * 3 + 2].metrics.relative_error;
      holding += claim.claim == "rtn<=svd_lowrank" ? rtn <= svd : (lq <= svd && svd <= rtn);
    }
    EXPECT_EQ(claim.holding, holding) << claim.claim;
    EXPECT_EQ(claim.failures.size(), claim.layers - claim.holding);
  }
  EXPECT_EQ(r.claims[1].holding, 0u);  // a rank-4 branch always helps these weights
  EXPECT_FALSE(r.claims[1].holds_in_aggregate);
  EXPECT_NE(r.claims[1].failures[0].find("rtn:sint4 "), std::string::npos);

  // The reports: every configuration in the Markdown, one CSV line per row, one point per configuration.
  const std::string md = slurp(o.output / "bench.md"), csv = slurp(o.output / "bench.csv"),
                    svg = slurp(o.output / "bench-sint4.svg");
  for (const BenchConfig& c : r.configs) EXPECT_NE(md.find("| " + c.label + " |"), std::string::npos) << c.label;
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), std::ptrdiff_t(1 + r.rows.size()));
  std::size_t circles = 0;
  for (std::size_t at = 0; (at = svg.find("<circle", at)) != std::string::npos; ++at) ++circles;
  EXPECT_EQ(circles, 3u + 3u);  // three points, three legend entries (one per method)
}

TEST_F(Bench, ClaimTokensMustNameOneConfiguration) {
  BenchOptions o = options("b");
  o.configs.push_back(loraq::parse_bench_config("loraq:sint4:fp16:r4"));
  o.claims = {"loraq<=rtn"};
  const std::string e = error_of([&] { loraq::run_bench(o); });
  EXPECT_NE(e.find("'loraq' matches 2 configurations"), std::string::npos) << e;
  EXPECT_NE(e.find("loraq:sint4:fp16:r4"), std::string::npos) << e;
  o.claims = {"lorc<=rtn"};  // a method the sweep does not run: named, with what the sweep has
  const std::string unknown = error_of([&] { loraq::run_bench(o); });
  EXPECT_NE(unknown.find("'lorc' is neither a method nor a configuration label of this sweep (methods: rtn, "
                         "svd_lowrank, loraq; labels: rtn:sint4, "),
            std::string::npos)
      << unknown;
  // Every token names a configuration, but no residual format has both.
  BenchOptions two = o;
  two.configs.push_back(loraq::parse_bench_config("rtn:mxfp4"));
  two.claims = {"rtn:mxfp4<=svd_lowrank"};
  EXPECT_NE(error_of([&] { loraq::run_bench(two); }).find("no residual format has a configuration"), std::string::npos);
  EXPECT_FALSE(fs::exists(o.output));  // refused before any work
  o.claims = {"loraq:fp16:r4<=rtn"};  // a label without its residual field names one
  EXPECT_EQ(loraq::run_bench(o).claims.at(0).labels,
            (std::vector<std::string>{"loraq:sint4:fp16:r4", "rtn:sint4"}));
}

TEST_F(Bench, SelectionOptions) {
  BenchOptions o = options("one");
  o.one_per_shape = true;
  EXPECT_EQ(loraq::run_bench(o).rows.size(), 2u * 3);  // blocks.1's to_q has blocks.0's shape
  o = options("max");
  o.max_layers = 1;
  EXPECT_EQ(loraq::run_bench(o).rows.size(), 1u * 3);
  o = options("none");
  o.layers.include = {"nothing.*"};
  o.layers.preset = "flux";
  EXPECT_NE(error_of([&] { loraq::run_bench(o); }).find("matches no tensor"), std::string::npos);
}

TEST_F(Bench, ResultsDoNotDependOnThreadsAndResume) {
  BenchOptions one = options("t1"), two = options("t2");
  one.threads = 1, one.jobs_in_flight = 1;
  two.threads = 2, two.jobs_in_flight = 2;
  const BenchResult a = loraq::run_bench(one), b = loraq::run_bench(two);
  ASSERT_EQ(a.rows.size(), b.rows.size());
  for (std::size_t i = 0; i < a.rows.size(); ++i) {
    EXPECT_EQ(a.rows[i].metrics.relative_error, b.rows[i].metrics.relative_error) << i;
    EXPECT_EQ(a.rows[i].metrics.branch_quant_error, b.rows[i].metrics.branch_quant_error) << i;
  }

  // An interrupted sweep: four rows and a torn fifth line.
  const fs::path rows = one.output / "rows.jsonl";
  std::string text = slurp(rows), kept;
  for (int n = 0; n < 4; ++n) kept += text.substr(0, text.find('\n') + 1), text.erase(0, text.find('\n') + 1);
  std::ofstream(rows, std::ios::binary | std::ios::trunc) << kept << text.substr(0, 20);
  EXPECT_NE(error_of([&] { loraq::run_bench(one); }).find("pass --resume"), std::string::npos);
  one.resume = true;
  const BenchResult resumed = loraq::run_bench(one);
  for (std::size_t i = 0; i < a.rows.size(); ++i)
    EXPECT_EQ(resumed.rows[i].metrics.relative_error, a.rows[i].metrics.relative_error) << i;
  // The rows file is whole again: a second resume reads every row and runs nothing.
  const std::string after = slurp(rows);
  EXPECT_EQ(std::count(after.begin(), after.end(), '\n'), std::ptrdiff_t(a.rows.size()));
  const BenchResult again = loraq::run_bench(one);
  for (std::size_t i = 0; i < a.rows.size(); ++i) EXPECT_EQ(again.rows[i].metrics.seconds, resumed.rows[i].metrics.seconds);
  BenchOptions other_steps = one;
  loraq::set_bench_param(other_steps.configs, "steps", 21);  // same labels, another parameter
  EXPECT_NE(error_of([&] { loraq::run_bench(other_steps); }).find("the earlier sweep had other"), std::string::npos);
  one.configs.pop_back();
  EXPECT_NE(error_of([&] { loraq::run_bench(one); }).find("the earlier sweep had other"), std::string::npos);
}

// The output SQNR on captured rows equals a double-precision recomputation from the effective weight.
TEST_F(Bench, OutputSqnrFromActivations) {
  constexpr std::int64_t kRows = 40;
  std::map<std::string, std::pair<std::vector<std::int64_t>, std::vector<float>>> t;
  for (std::size_t i = 0; i < kLayers.size(); ++i)
    t[loraq::ActivationFile::layer_prefix(kLayers[i].name) + ".input_rows"] = {{kRows, kLayers[i].in}, layer_rows(i, kRows)};
  write_f32(dir_ / "acts.safetensors", t);
  BenchOptions o = options("b");
  o.activations = dir_ / "acts.safetensors";
  const BenchResult r = loraq::run_bench(o);
  for (const loraq::BenchRow& row : r.rows) {
    const std::size_t l = std::size_t(&row - r.rows.data()) / 3;
    const std::vector<float> w = layer_weight(l), x = layer_rows(l, kRows);
    loraq::LayerInput input;
    input.name = row.layer;
    input.weight = w;
    input.out_features = row.out_features;
    input.in_features = row.in_features;
    input.recipe = &r.configs[row.config].recipe;
    const std::vector<float> eff = loraq::effective_weight(loraq::quantize_layer(input));
    double signal = 0, noise = 0;
    for (std::int64_t n = 0; n < kRows; ++n)
      for (std::int64_t o2 = 0; o2 < row.out_features; ++o2) {
        double y = 0, e = 0;
        for (std::int64_t k = 0; k < row.in_features; ++k) {
          const double xv = x[std::size_t(n * row.in_features + k)];
          y += xv * w[std::size_t(o2 * row.in_features + k)];
          e += xv * (double(eff[std::size_t(o2 * row.in_features + k)]) - w[std::size_t(o2 * row.in_features + k)]);
        }
        signal += y * y, noise += e * e;
      }
    ASSERT_TRUE(row.metrics.output_sqnr_db.has_value());
    EXPECT_NEAR(*row.metrics.output_sqnr_db, 10 * std::log10(signal / noise), 1e-3) << row.layer;
  }
  EXPECT_NE(slurp(o.output / "bench.csv").find(",output_sqnr_db\n"), std::string::npos);

  // A file without one of the layers, or with the wrong width: refused before any work, naming both.
  t.erase(loraq::ActivationFile::layer_prefix(kLayers[2].name) + ".input_rows");
  t["blocks.1.attn.to_q.input_rows"] = {{kRows, 32}, std::vector<float>(std::size_t(kRows * 32), 1.0f)};
  write_f32(dir_ / "bad.safetensors", t);
  o = options("bad");
  o.activations = dir_ / "bad.safetensors";
  const std::string e = error_of([&] { loraq::run_bench(o); });
  EXPECT_NE(e.find("bad.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("'blocks.1.attn.to_q.input_rows' has shape [40, 32], expected [n, 64]"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(o.output));
  t.erase("blocks.1.attn.to_q.input_rows");
  write_f32(dir_ / "missing.safetensors", t);
  o.activations = dir_ / "missing.safetensors";
  EXPECT_NE(error_of([&] { loraq::run_bench(o); }).find("no tensor 'blocks.1.attn.to_q.input_rows' for layer "
                                                         "'blocks.1.attn.to_q.weight'"),
            std::string::npos);
}

}  // namespace
