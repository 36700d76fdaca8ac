// Recipes: the shipped files load, every kind of mistake is reported at its file, line and key,
// overrides resolve as documented, the budget rule follows the paper, and to_json is canonical.
#include <gtest/gtest.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <unistd.h>

#include "loraq/error.hpp"
#include "loraq/methods.hpp"
#include "loraq/recipe.hpp"

namespace loraq {
namespace {

const std::filesystem::path kRecipesDir = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "recipes";

// A method table with a branch method and one parameter of each type, so that the table-driven
// checks (types, ranges, unknown names, rank or budget required) are tested before the real
// methods with parameters land.
constexpr std::array<MethodParam, 3> kLowRankParams = {{
    {"steps", ParamType::integer, 100, 1, 10000, "optimizer steps"},
    {"lr", ParamType::real, 1e-3, 0, 1, "learning rate"},
    {"rotate", ParamType::boolean, 1, 0, 1, "learn a rotation of the branch"},
}};
constexpr std::array<MethodParam, 1> kOtherParams = {{
    {"steps", ParamType::integer, 7, 1, 100, "another method's steps"},
}};
constexpr std::array<MethodInfo, 3> kTestMethods = {{
    {"rtn", "round to nearest", false, false, {}, nullptr},
    {"lowrank", "test method with a branch", true, false, kLowRankParams, nullptr},
    {"other", "second test method with a branch", true, false, kOtherParams, nullptr},
}};

// The message of the Error that parsing `text` as "bad.yaml" throws; "" when it parses.
std::string parse_error(const std::string& text, std::span<const MethodInfo> methods = all_methods()) {
  try {
    parse_recipe(text, "bad.yaml", methods);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The message must start "bad.yaml:LINE: KEY: " (or "bad.yaml:LINE: " for an empty key) and contain
// every string of `also`.
void expect_error(const std::string& text, int line, const std::string& key, const std::vector<std::string>& also = {},
                  std::span<const MethodInfo> methods = all_methods()) {
  const std::string message = parse_error(text, methods);
  SCOPED_TRACE(text);
  ASSERT_FALSE(message.empty()) << "no error";
  const std::string prefix = "bad.yaml:" + std::to_string(line) + ": " + (key.empty() ? "" : key + ": ");
  EXPECT_EQ(message.substr(0, prefix.size()), prefix) << message;
  for (const std::string& s : also) EXPECT_NE(message.find(s), std::string::npos) << "'" << s << "' not in: " << message;
}

TEST(Recipe, EveryShippedRecipeLoads) {
  ASSERT_TRUE(std::filesystem::is_directory(kRecipesDir)) << kRecipesDir;
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kRecipesDir)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    const Recipe recipe = load_recipe(entry.path());
    EXPECT_EQ(recipe.name, entry.path().stem().string());
    EXPECT_FALSE(recipe.description.empty());
    EXPECT_NO_THROW(method_info(recipe.defaults.method));
    EXPECT_NO_THROW(recipe.to_json());
    EXPECT_EQ(recipe.source, entry.path());
    ++count;
  }
  EXPECT_GE(count, 4);
}

TEST(Recipe, RtnRecipesUsePixartAndTheirFormat) {
  const std::array<std::pair<const char*, Format>, 4> expected = {{
      {"rtn-sint4", Format::sint4}, {"rtn-mxfp4", Format::mxfp4},
      {"rtn-nvfp4", Format::nvfp4}, {"rtn-mxint4", Format::mxint4},
  }};
  for (const auto& [name, format] : expected) {
    const Recipe recipe = load_recipe(kRecipesDir / (std::string(name) + ".yaml"));
    EXPECT_EQ(recipe.defaults.method, "rtn");
    EXPECT_EQ(recipe.defaults.residual_format, format) << name;
    EXPECT_EQ(recipe.layers.preset, "pixart-sigma");
    EXPECT_FALSE(recipe.defaults.rank || recipe.defaults.budget);
  }
}

TEST(Recipe, DefaultsOfAMinimalRecipe) {
  const Recipe recipe = parse_recipe("name: minimal\n", "m.yaml");
  EXPECT_EQ(recipe.name, "minimal");
  EXPECT_EQ(recipe.description, "");
  EXPECT_EQ(recipe.defaults.method, "rtn");
  EXPECT_EQ(recipe.defaults.residual_format, Format::sint4);
  EXPECT_EQ(recipe.defaults.rounding, Rounding::nearest_even);
  EXPECT_FALSE(recipe.defaults.rank || recipe.defaults.budget);
  EXPECT_FALSE(recipe.defaults.residual_activation || recipe.defaults.branch_activation ||
               recipe.defaults.intermediate_activation);
  EXPECT_TRUE(recipe.defaults.params.empty());
  EXPECT_EQ(recipe.defaults.seed, 0u);
  EXPECT_EQ(recipe.layers.preset, "generic");
  EXPECT_TRUE(recipe.overrides.empty());
}

TEST(Recipe, EveryKeyIsRead) {
  const std::string text =
      "name: full\n"
      "description: all keys\n"
      "method: lowrank\n"
      "residual: {format: mxint4, rounding: ties-away}\n"
      "branch:\n"
      "  format: mxfp8_e4m3\n"
      "  rank: 48\n"
      "activations: {residual: mxint8, branch: mxfp8_e4m3, intermediate: mxint4}\n"
      "params: {steps: 250, lr: 0.01, rotate: false}\n"
      "seed: 18446744073709551615\n"
      "layers:\n"
      "  preset: sana\n"
      "  include: [proj_out.weight]\n"
      "  exclude: ['transformer_blocks.0.*', 'transformer_blocks.1.*']\n";
  const Recipe recipe = parse_recipe(text, "full.yaml", kTestMethods);
  const LayerRecipe& d = recipe.defaults;
  EXPECT_EQ(recipe.description, "all keys");
  EXPECT_EQ(d.method, "lowrank");
  EXPECT_EQ(d.residual_format, Format::mxint4);
  EXPECT_EQ(d.rounding, Rounding::nearest_away);
  EXPECT_EQ(d.branch_format, Format::mxfp8_e4m3);
  EXPECT_EQ(d.rank, 48);
  EXPECT_FALSE(d.budget);
  EXPECT_EQ(d.residual_activation, Format::mxint8);
  EXPECT_EQ(d.branch_activation, Format::mxfp8_e4m3);
  EXPECT_EQ(d.intermediate_activation, Format::mxint4);
  EXPECT_EQ(d.params, (std::map<std::string, double>{{"steps", 250}, {"lr", 0.01}, {"rotate", 0}}));
  EXPECT_EQ(d.seed, 18446744073709551615ull);
  EXPECT_EQ(recipe.layers.preset, "sana");
  EXPECT_EQ(recipe.layers.include, std::vector<std::string>{"proj_out.weight"});
  EXPECT_EQ(recipe.layers.exclude, (std::vector<std::string>{"transformer_blocks.0.*", "transformer_blocks.1.*"}));
}

TEST(Recipe, MissingParamsTakeTheTableDefaults) {
  const Recipe recipe = parse_recipe("name: p\nmethod: lowrank\nbranch: {rank: 8}\nparams: {lr: 0.5}\n", "p.yaml", kTestMethods);
  EXPECT_EQ(recipe.defaults.params, (std::map<std::string, double>{{"steps", 100}, {"lr", 0.5}, {"rotate", 1}}));
}

// ---- errors: each names the file, the line and the key ----

TEST(RecipeErrors, UnknownTopLevelKeyListsTheValidOnes) {
  expect_error("name: t\nmethod: rtn\nnmae: x\n", 3, "nmae",
               {"unknown key", "name, description, method, residual, branch, activations, smoothing, params, seed, layers, overrides"});
}

TEST(RecipeErrors, UnknownNestedKey) {
  const std::string text =
      "name: t\n"
      "method: lowrank\n"
      "branch:\n"
      "  format: fp16\n"
      "  rnk: 32\n";
  expect_error(text, 5, "branch.rnk", {"valid keys: format, rank, budget"}, kTestMethods);
  expect_error("name: t\nresidual:\n  format: sint4\n  roundng: ties-even\n", 4, "residual.roundng",
               {"valid keys: format, rounding"});
  expect_error("name: t\nlayers: {preset: none, includes: [a]}\n", 2, "layers.includes", {"preset, include, exclude"});
  expect_error("name: t\nactivations: {residul: sint4}\n", 2, "activations.residul", {"residual, branch"});
}

TEST(RecipeErrors, StringWhereIntegerExpected) {
  expect_error("name: t\nmethod: lowrank\nbranch: {rank: abc}\n", 3, "branch.rank", {"expected an integer", "abc"},
               kTestMethods);
  // Quoted, "32" is a string in YAML: not silently converted.
  expect_error("name: t\nmethod: lowrank\nbranch: {rank: \"32\"}\n", 3, "branch.rank", {"expected an integer"},
               kTestMethods);
  expect_error("name: t\nmethod: lowrank\nbranch: {rank: 32.5}\n", 3, "branch.rank", {"expected an integer"},
               kTestMethods);
  expect_error("name: t\n\nseed: twelve\n", 3, "seed", {"expected a non-negative integer", "twelve"});
  expect_error("name: t\nseed: 1.0\n", 2, "seed", {"expected a non-negative integer"});
  expect_error("name: t\nseed: -1\n", 2, "seed", {"non-negative"});
  expect_error("name: t\nseed: 18446744073709551616\n", 2, "seed", {"64 bits"});
  expect_error("name: t\nmethod: lowrank\nbranch: {budget: lots}\n", 3, "branch.budget", {"expected a finite number"},
               kTestMethods);
}

TEST(RecipeErrors, ListOrScalarWhereMapExpected) {
  expect_error("name: t\nresidual: [sint4]\n", 2, "residual", {"expected a map with keys format, rounding", "a list"});
  expect_error("name: t\nlayers: pixart-sigma\n", 2, "layers", {"expected a map", "'pixart-sigma'"});
  expect_error("name: t\nlayers:\n  include: proj_out.weight\n", 3, "layers.include", {"expected a list"});
  expect_error("name: t\nlayers:\n  include:\n    - a\n    - {b: c}\n", 5, "layers.include[1]", {"expected a string"});
  expect_error("name: [t]\n", 1, "name", {"expected a string", "a list"});
  expect_error("- name: t\n", 1, "", {"expected a map at the top level"});
  expect_error("", 1, "", {"expected a map at the top level", "nothing"});
  expect_error("name: t\noverrides: {match: x}\n", 2, "overrides", {"expected a list"});
  expect_error("name: t\noverrides:\n  - match: a\n  - x\n", 4, "overrides[1]", {"expected a map"});
}

TEST(RecipeErrors, RangeChecksOnRankBudgetAndRounding) {
  expect_error("name: t\nmethod: lowrank\nbranch: {rank: 0}\n", 3, "branch.rank", {">= 1", "0"}, kTestMethods);
  expect_error("name: t\nmethod: lowrank\nbranch: {rank: 3000000000}\n", 3, "branch.rank", {">= 1"}, kTestMethods);
  expect_error("name: t\nmethod: lowrank\nbranch: {budget: 0}\n", 3, "branch.budget", {"> 0"}, kTestMethods);
  expect_error("name: t\nmethod: lowrank\nbranch: {budget: -512}\n", 3, "branch.budget", {"> 0"}, kTestMethods);
  expect_error("name: t\nresidual: {rounding: nearest}\n", 2, "residual.rounding", {"ties-even, ties-away"});
}

TEST(RecipeErrors, ParamsAreCheckedAgainstTheMethodTable) {
  // rtn has no parameters.
  expect_error("name: t\nmethod: rtn\nparams:\n  steps: 10\n", 4, "params.steps", {"unknown parameter", "'rtn'", "no parameters"});
  // The test table: unknown names list the valid ones; each type and range is enforced.
  const std::string head = "name: t\nmethod: lowrank\nbranch: {rank: 4}\nparams:\n";
  expect_error(head + "  step: 10\n", 5, "params.step", {"valid parameters: steps, lr, rotate"}, kTestMethods);
  expect_error(head + "  steps: 1.5\n", 5, "params.steps", {"expected an integer"}, kTestMethods);
  expect_error(head + "  steps: 0\n", 5, "params.steps", {"[1, 10000]", "got 0"}, kTestMethods);
  expect_error(head + "  steps: 10001\n", 5, "params.steps", {"[1, 10000]"}, kTestMethods);
  expect_error(head + "  lr: fast\n", 5, "params.lr", {"expected a finite number"}, kTestMethods);
  expect_error(head + "  lr: 1.5\n", 5, "params.lr", {"[0, 1]", "1.5"}, kTestMethods);
  expect_error(head + "  lr: .nan\n", 5, "params.lr", {"expected a finite number"}, kTestMethods);
  expect_error(head + "  rotate: 1\n", 5, "params.rotate", {"expected true or false"}, kTestMethods);
  expect_error(head + "  rotate: yes\n", 5, "params.rotate", {"expected true or false"}, kTestMethods);
  expect_error(head + "  rotate: \"true\"\n", 5, "params.rotate", {"expected true or false"}, kTestMethods);
  expect_error("name: t\nmethod: lowrank\nbranch: {rank: 4}\nparams: [1]\n", 4, "params", {"expected a map"}, kTestMethods);
}

TEST(RecipeErrors, UnknownFormatListsTheKnownNames) {
  expect_error("name: t\nresidual:\n  format: int3\n", 3, "residual.format", {"unknown format 'int3'", "sint4", "mxfp4", "nvfp4"});
  expect_error("name: t\nactivations: {residual: fp12}\n", 2, "activations.residual", {"unknown format 'fp12'"});
  expect_error("name: t\nmethod: lowrank\nbranch: {format: mxfp5, rank: 3}\n", 3, "branch.format", {"unknown format"},
               kTestMethods);
}

TEST(RecipeErrors, UnknownMethodListsTheKnownNames) {
  expect_error("name: t\n# comment\nmethod: gptq\n", 3, "method", {"unknown method 'gptq'", "rtn"});
  expect_error("name: t\nmethod: gptq\n", 2, "method", {"rtn, lowrank, other"}, kTestMethods);
  expect_error("name: t\noverrides:\n  - match: a\n    method: gptq\n", 4, "overrides[0].method", {"unknown method"});
}

TEST(RecipeErrors, RankAndBudgetTogether) {
  expect_error("name: t\nmethod: lowrank\nbranch: {format: mxfp4, rank: 32, budget: 512}\n", 3, "branch",
               {"rank or budget, not both"}, kTestMethods);
}

TEST(RecipeErrors, BranchGivenToAMethodWithoutOne) {
  expect_error("name: t\nmethod: rtn\nresidual: {format: sint4}\nbranch: {format: fp16, rank: 32}\n", 4, "branch",
               {"'rtn' has no low-rank branch"});
  // The order of keys in the file does not matter.
  expect_error("name: t\nbranch: {rank: 32}\nmethod: rtn\n", 2, "branch", {"no low-rank branch"});
  expect_error("name: t\nactivations:\n  branch: fp16\n", 3, "activations.branch", {"no low-rank branch"});
  expect_error("name: t\nactivations:\n  residual: mxint8\n  intermediate: mxint8\n", 4, "activations.intermediate",
               {"no low-rank branch"});
  expect_error("name: t\nmethod: lowrank\nbranch: {rank: 3}\noverrides:\n  - match: a\n    method: rtn\n    branch: {rank: 8}\n",
               7, "overrides[0].branch", {"'rtn' has no low-rank branch"}, kTestMethods);
}

TEST(RecipeErrors, BranchMethodNeedsRankOrBudget) {
  expect_error("name: t\n\nmethod: lowrank\nbranch: {format: mxfp4}\n", 3, "method",
               {"give branch.rank", "branch.budget"}, kTestMethods);
  // An override that switches to a branch method from one without a branch: its own line.
  expect_error("name: t\nmethod: rtn\noverrides:\n  - match: a\n  - match: b\n    method: other\n", 6, "overrides[1].method",
               {"give branch.rank"}, kTestMethods);
}

TEST(RecipeErrors, MissingKeys) {
  expect_error("description: no name\nmethod: rtn\n", 1, "name", {"required"});
  expect_error("# header\n\ndescription: no name\n", 3, "name", {"required"});
  expect_error("name: t\noverrides:\n  - method: rtn\n", 3, "overrides[0].match", {"required"});
  expect_error("name: ''\n", 1, "name", {"must not be empty"});
}

TEST(RecipeErrors, OverrideKeysAreChecked) {
  expect_error("name: t\noverrides:\n  - match: a\n    layers: {preset: none}\n", 4, "overrides[0].layers",
               {"unknown key", "match, method, residual, branch, activations, smoothing, params, seed"});
  expect_error("name: t\noverrides:\n  - match: a\n    seed: x\n", 4, "overrides[0].seed", {"non-negative integer"});
  expect_error("name: t\noverrides:\n  - match: a\n    params: {steps: 3}\n", 4, "overrides[0].params.steps",
               {"unknown parameter"});
  expect_error("name: t\nmethod: lowrank\nbranch: {rank: 3}\noverrides:\n  - match: a\n    params: {lr: 2}\n", 6,
               "overrides[0].params.lr", {"[0, 1]"}, kTestMethods);
}

TEST(RecipeErrors, UnknownLayerPreset) {
  expect_error("name: t\nlayers:\n  preset: pixart\n", 3, "layers.preset", {"unknown layer preset", "pixart-sigma", "sana", "flux"});
}

TEST(RecipeErrors, DuplicateKey) {
  expect_error("name: t\nseed: 1\nseed: 2\n", 3, "seed", {"duplicate key"});
}

TEST(RecipeErrors, YamlSyntaxError) {
  // yaml-cpp reports the line where it notices the problem.
  expect_error("name: t\nmethod: rtn\n  seed: 1\n", 3, "", {"YAML syntax error", "illegal map value"});
  expect_error("name: t\n\tseed: 1\n", 2, "", {"YAML syntax error", "tab"});
  expect_error("name: t\nresidual: {format: sint4\nseed: 3\n", 3, "", {"YAML syntax error"});
  // An unclosed bracket is noticed at the end of the text: the last line, not one past it.
  expect_error("name: t\nlayers:\n  include: [a, b\n", 3, "", {"YAML syntax error"});
  expect_error("name: t\nlayers:\n  include: [a, b", 3, "", {"YAML syntax error"});
}

TEST(RecipeErrors, LoadRecipeNamesTheFile) {
  const std::filesystem::path path = std::filesystem::temp_directory_path() / ("loraq-test-recipe-" + std::to_string(::getpid()) + ".yaml");
  {
    std::ofstream out(path);
    out << "name: t\nresidual: {format: sint5}\n";
  }
  try {
    load_recipe(path);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path.string() + ":2: residual.format: ", 0), 0u) << e.what();
  }
  std::filesystem::remove(path);
  try {
    load_recipe(path);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
}

// ---- overrides ----

TEST(RecipeOverrides, LastMatchWinsAndEachStartsFromTheDefaults) {
  const std::string text =
      "name: o\n"
      "method: lowrank\n"
      "residual: {format: mxint4}\n"
      "branch: {format: fp16, budget: 512}\n"
      "params: {steps: 200}\n"
      "overrides:\n"
      "  - match: \"transformer_blocks.*\"\n"
      "    branch: {rank: 64}\n"
      "  - match: \"transformer_blocks.0.*\"\n"
      "    params: {lr: 0.5}\n"
      "  - match: \"*.ff.*\"\n"
      "    method: other\n"
      "  - match: \"*.ff.net.2.weight\"\n"
      "    method: other\n"
      "    params: {steps: 9}\n"
      "    seed: 5\n"
      "  - match: proj_out.weight\n"
      "    method: rtn\n"
      "    residual: {format: sint4}\n";
  const Recipe recipe = parse_recipe(text, "o.yaml", kTestMethods);
  ASSERT_EQ(recipe.overrides.size(), 5u);
  EXPECT_EQ(recipe.overrides[0].line, 7);
  EXPECT_EQ(recipe.overrides[4].line, 17);

  // Only the first override matches: its rank replaces the defaults' budget.
  const LayerRecipe& block5 = recipe.for_layer("transformer_blocks.5.attn1.to_q.weight");
  EXPECT_EQ(block5.rank, 64);
  EXPECT_FALSE(block5.budget);
  EXPECT_EQ(block5.residual_format, Format::mxint4);
  EXPECT_EQ(block5.params.at("steps"), 200);

  // Overrides 0 and 1 match; the last wins, and it is the defaults plus lr (no rank 64 from
  // override 0: overrides do not stack).
  const LayerRecipe& block0 = recipe.for_layer("transformer_blocks.0.attn1.to_q.weight");
  EXPECT_EQ(&block0, &recipe.overrides[1].recipe);
  EXPECT_FALSE(block0.rank);
  EXPECT_EQ(block0.budget, 512.0);
  EXPECT_EQ(block0.params, (std::map<std::string, double>{{"steps", 200}, {"lr", 0.5}, {"rotate", 1}}));

  // A new method starts from its own parameter defaults...
  const LayerRecipe& ff0 = recipe.for_layer("transformer_blocks.3.ff.net.0.proj.weight");
  EXPECT_EQ(ff0.method, "other");
  EXPECT_EQ(ff0.params, (std::map<std::string, double>{{"steps", 7}}));
  EXPECT_EQ(ff0.budget, 512.0);  // the branch carries over: both methods have one
  // ...and the override's own params apply on top.
  const LayerRecipe& ff2 = recipe.for_layer("transformer_blocks.3.ff.net.2.weight");
  EXPECT_EQ(ff2.params, (std::map<std::string, double>{{"steps", 9}}));
  EXPECT_EQ(ff2.seed, 5u);

  // A method without a branch keeps nothing of one.
  const LayerRecipe& out = recipe.for_layer("proj_out.weight");
  EXPECT_EQ(out.method, "rtn");
  EXPECT_TRUE(out.params.empty());
  EXPECT_FALSE(out.rank || out.budget || out.branch_activation || out.intermediate_activation);
  EXPECT_EQ(out.residual_format, Format::sint4);

  // No match: the defaults.
  EXPECT_EQ(&recipe.for_layer("pos_embed.proj.weight"), &recipe.defaults);
  // Whole-name matching: "proj_out.weight" does not match a longer name.
  EXPECT_EQ(&recipe.for_layer("x.proj_out.weight"), &recipe.defaults);
}

TEST(RecipeOverrides, SameMethodKeepsTheDefaultsParams) {
  const Recipe recipe = parse_recipe(
      "name: o\nmethod: lowrank\nbranch: {rank: 2}\nparams: {steps: 300}\noverrides:\n  - match: a\n    method: lowrank\n",
      "o.yaml", kTestMethods);
  EXPECT_EQ(recipe.for_layer("a").params.at("steps"), 300);
}

// ---- budget: rank = floor(beta / bits per value of Q2), Section 3.3 of the paper ----

TEST(RecipeBudget, PaperRuleWithScaleOverhead) {
  LayerRecipe r;
  r.method = "lowrank";
  r.budget = 512;  // SVDQuant's fp16 rank-32 branch: 16 bits x 32 = 512 bits per channel
  r.branch_format = Format::fp16;
  EXPECT_EQ(r.branch_rank(1152), 32);  // 512 / 16
  EXPECT_EQ(r.branch_rank(7), 32);     // a cast has no blocks: 16 bits at any width
  // mxfp4: 4-bit elements and one 8-bit E8M0 scale per 32: 4 + 8/32 = 4.25 bits; 512 / 4.25 = 120.47
  r.branch_format = Format::mxfp4;
  EXPECT_EQ(r.branch_rank(1152), 120);
  // sint4: 4 bits and one 16-bit scale per 64: 4 + 16/64 = 4.25 bits too
  r.branch_format = Format::sint4;
  EXPECT_EQ(r.branch_rank(1152), 120);
  // mxint8 / mxfp8: 8 + 8/32 = 8.25 bits; 512 / 8.25 = 62.06
  r.branch_format = Format::mxint8;
  EXPECT_EQ(r.branch_rank(1152), 62);
  r.branch_format = Format::mxfp8_e4m3;
  EXPECT_EQ(r.branch_rank(1152), 62);
  // mxfp6: 6 + 8/32 = 6.25 bits; 512 / 6.25 = 81.92
  r.branch_format = Format::mxfp6_e2m3;
  EXPECT_EQ(r.branch_rank(1152), 81);
  // nvfp4: 4 + 8/16 = 4.5 bits (the per-tensor fp32 is not per value); 512 / 4.5 = 113.8
  r.branch_format = Format::nvfp4;
  EXPECT_EQ(r.branch_rank(1152), 113);
  // A partial last block pays a whole scale and a padded block: mxfp4 at 1000 values is 32 blocks,
  // 32 x (32 x 4 + 8) = 4352 bits for 1000 values = 4.352 bits; 512 / 4.352 = 117.6
  r.branch_format = Format::mxfp4;
  EXPECT_EQ(r.branch_rank(1000), 117);
  // An exact ratio is not lost to rounding: 510 / 4.25 = 120, 8.5 / 4.25 = 2.
  r.budget = 510;
  EXPECT_EQ(r.branch_rank(1152), 120);
  r.budget = 8.5;
  EXPECT_EQ(r.branch_rank(1152), 2);
  // An explicit rank is used as is.
  r.rank = 17;
  r.budget.reset();
  EXPECT_EQ(r.branch_rank(1152), 17);
}

TEST(RecipeBudget, RankBelowOneIsAnError) {
  LayerRecipe r;
  r.budget = 12;
  r.branch_format = Format::fp16;  // 12 / 16 = 0.75
  try {
    r.branch_rank(1152);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("1152"), std::string::npos) << message;
    EXPECT_NE(message.find("budget 12"), std::string::npos) << message;
  }
  r.budget.reset();
  EXPECT_THROW(r.branch_rank(1152), Error);  // neither rank nor budget
}

TEST(RecipeBudget, ThroughARecipe) {
  const Recipe recipe =
      parse_recipe("name: b\nmethod: lowrank\nbranch: {format: mxfp4_e2m1, budget: 512}\n", "b.yaml", kTestMethods);
  EXPECT_EQ(recipe.defaults.branch_format, Format::mxfp4);
  EXPECT_EQ(recipe.defaults.branch_rank(1152), 120);
}

// ---- to_json ----

TEST(RecipeJson, SortedCompactAndStable) {
  const Recipe recipe = load_recipe(kRecipesDir / "rtn-sint4.yaml");
  const std::string json = recipe.to_json();
  EXPECT_EQ(json, recipe.to_json());
  EXPECT_EQ(json, load_recipe(kRecipesDir / "rtn-sint4.yaml").to_json());
  // Re-serializing the parsed text gives the same bytes: keys sorted, no whitespace.
  EXPECT_EQ(nlohmann::json::parse(json).dump(), json);
  EXPECT_EQ(json.find('\n'), std::string::npos);
  EXPECT_EQ(json.find("\": "), std::string::npos);
  // Every default is spelled out.
  for (const char* key : {"\"rounding\":\"ties-even\"", "\"seed\":0", "\"branch\":null", "\"activations\":{",
                          "\"params\":{}", "\"overrides\":[]", "\"exclude\":[]", "\"preset\":\"pixart-sigma\""})
    EXPECT_NE(json.find(key), std::string::npos) << key << " not in " << json;
}

TEST(RecipeJson, EquivalentRecipesGiveTheSameText) {
  const std::string a = "name: a\nmethod: rtn\nresidual: {format: mxfp4}\nlayers: {preset: pixart-sigma}\n";
  const std::string b =
      "layers:\n  preset: pixart-sigma\nresidual:\n  rounding: ties-even\n  format: mxfp4_e2m1\nseed: 0\n"
      "description: ''\nname: a\nparams: {}\n";
  EXPECT_EQ(parse_recipe(a, "a.yaml").to_json(), parse_recipe(b, "b.yaml").to_json());
  EXPECT_NE(parse_recipe(a, "a.yaml").to_json(), parse_recipe(a + "seed: 1\n", "a.yaml").to_json());
  EXPECT_NE(parse_recipe(a, "a.yaml").to_json(),
            parse_recipe(a + "overrides:\n  - match: x\n", "a.yaml").to_json());

  const std::string c = "name: c\nmethod: lowrank\nbranch: {format: mxfp4, budget: 512}\n";
  const std::string d =
      "name: c\nmethod: lowrank\nbranch: {budget: 512.0, format: mxfp4}\nparams: {rotate: true, steps: 100, lr: 0.001}\n";
  EXPECT_EQ(parse_recipe(c, "c.yaml", kTestMethods).to_json(), parse_recipe(d, "d.yaml", kTestMethods).to_json());
  EXPECT_NE(parse_recipe(c, "c.yaml", kTestMethods).to_json(),
            parse_recipe("name: c\nmethod: lowrank\nbranch: {format: mxfp4, rank: 120}\n", "c.yaml", kTestMethods).to_json());
  // An override switching to rtn drops the branch, however the defaults' branch was given.
  const std::string e = c + "overrides:\n  - match: x\n    method: rtn\n";
  const std::string f = "name: c\nmethod: lowrank\nbranch: {format: mxfp4, budget: 512}\noverrides:\n  - match: x\n    method: rtn\n";
  EXPECT_EQ(parse_recipe(e, "e.yaml", kTestMethods).to_json(), parse_recipe(f, "f.yaml", kTestMethods).to_json());
  const nlohmann::json parsed = nlohmann::json::parse(parse_recipe(e, "e.yaml", kTestMethods).to_json());
  EXPECT_TRUE(parsed["overrides"][0]["recipe"]["branch"].is_null());
  EXPECT_EQ(parsed["defaults"]["branch"]["budget"], 512);
  EXPECT_TRUE(parsed["defaults"]["branch"]["rank"].is_null());
  EXPECT_EQ(parsed["defaults"]["params"]["steps"], 100);
}

TEST(RecipeJson, IntermediateActivationAppearsOnlyWhenSet) {
  // Absent when unset, so that a run started before the key existed keeps its plan text and
  // resumes; present and distinct when set.
  const std::string c = "name: c\nmethod: lowrank\nbranch: {format: mxint8, rank: 64}\nactivations: {branch: mxint8}\n";
  const std::string plain = parse_recipe(c, "c.yaml", kTestMethods).to_json();
  EXPECT_EQ(plain.find("intermediate"), std::string::npos) << plain;
  const std::string with =
      parse_recipe("name: c\nmethod: lowrank\nbranch: {format: mxint8, rank: 64}\n"
                   "activations: {branch: mxint8, intermediate: mxint8}\n",
                   "c.yaml", kTestMethods)
          .to_json();
  EXPECT_EQ(nlohmann::json::parse(with)["defaults"]["activations"]["intermediate"], "mxint8");
}

}  // namespace
}  // namespace loraq
