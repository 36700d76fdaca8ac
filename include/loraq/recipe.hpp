// Recipes: what `loraq quantize` does to each layer, read from a YAML file.
//
//   name: svdquant-sint4-r32
//   description: SVDQuant's weight path (Table 1)
//   method: svd_lowrank            # a name from the method table (loraq/methods.hpp)
//   residual: {format: sint4}      # Q1 and its rounding
//   branch: {format: fp16, rank: 32}          # Q2 and rank, or {format: mxfp4, budget: 512}
//   activations: {residual: sint4, branch: fp16}   # optional, per branch (the kernels' inputs)
//   smoothing: {alpha: auto, beta: auto}  # optional; numbers in [0, 1] fix them; `off` in overrides
//   params: {steps: 1000}          # method parameters, checked against the method table
//   seed: 0
//   layers: {preset: pixart-sigma, include: [...], exclude: [...]}
//   overrides:                     # the last matching entry wins; any subset of method, residual,
//     - match: "transformer_blocks.0.*"    # branch, activations, params, seed
//       branch: {rank: 64}
//
// Every error (unknown key, wrong type, value out of range, unknown format or method, missing key,
// YAML syntax) throws Error as "FILE:LINE: KEY.PATH: what is wrong and what was expected".
// docs/recipes.md describes every key, its type and default.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "loraq/format.hpp"
#include "loraq/methods.hpp"

namespace loraq {

// What happens to one layer.
struct LayerRecipe {
  std::string method = "rtn";
  Format residual_format = Format::sint4;  // Q1
  Rounding rounding = Rounding::nearest_even;
  Format branch_format = Format::fp16;     // Q2 (used by methods with a branch)
  std::optional<int> rank;                 // explicit rank, or
  std::optional<double> budget;            // the paper's beta: branch bits per channel; rank = floor(beta / bits(Q2))
  std::optional<Format> residual_activation;
  std::optional<Format> branch_activation;
  // Qt: the format of the branch's intermediate T = Qa2(X) down^T at the up-projection's input
  // (unset: T stays fp32, as in the paper's formula).
  std::optional<Format> intermediate_activation;
  // SmoothQuant-style smoothing (SVDQuant, the paper's A.1.1): s_j = max|X_j|^alpha / max|W_j|^beta,
  // the weight quantized as W diag(s), the input divided by s. An unset alpha or beta ("auto") is
  // chosen per layer by grid search on output error over captured rows (methods/smoothing.cpp).
  struct Smoothing {
    std::optional<double> alpha, beta;
  };
  std::optional<Smoothing> smoothing;       // unset: no smoothing
  std::map<std::string, double> params;    // every parameter of the method, defaults filled in
  std::uint64_t seed = 0;

  // The branch rank for a layer: `rank`, or floor(budget / bits_per_value(Q2, in_features)) (the
  // paper's rho' = floor(beta / bits)). Throws Error when that is below 1 (naming in_features and the
  // budget) or when the recipe has neither (a method without a branch).
  int branch_rank(std::int64_t in_features) const;
};

struct LayerSelection {
  std::string preset = "generic";          // see loraq/layers.hpp
  std::vector<std::string> include;        // extra glob patterns (added to the preset's)
  std::vector<std::string> exclude;        // glob patterns removed afterwards
};

struct Recipe {
  std::string name;
  std::string description;
  LayerSelection layers;
  LayerRecipe defaults;
  struct Override {
    std::string match;  // glob over tensor names
    LayerRecipe recipe; // `defaults` with this override's keys applied (earlier overrides play no
                        // part); a new method resets params to its defaults, then the override's
                        // params apply; branch.rank and branch.budget replace each other
    int line = 0;       // 1-based line of the override in the recipe file
  };
  std::vector<Override> overrides;
  std::filesystem::path source;

  // The recipe of a tensor: the last override whose pattern matches it, else the defaults.
  const LayerRecipe& for_layer(std::string_view tensor_name) const;
  // A canonical JSON text (sorted keys, every default spelled out): recorded in output metadata and
  // compared on --resume.
  std::string to_json() const;
};

// Reads and checks a recipe file against the method table (all_methods()).
Recipe load_recipe(const std::filesystem::path& path);
// The same from text; `path_for_messages` is the FILE of the error messages and Recipe::source.
Recipe parse_recipe(const std::string& yaml_text, const std::filesystem::path& path_for_messages);
// The same against another method table (tests check parameter types and ranges through it).
Recipe parse_recipe(const std::string& yaml_text, const std::filesystem::path& path_for_messages,
                    std::span<const MethodInfo> methods);

}  // namespace loraq
