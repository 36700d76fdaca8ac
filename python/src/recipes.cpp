// Recipes from Python, for loraq.torch: which tensors a recipe's layer selection picks and what a
// layer's entry says, computed by the same C++ as `loraq quantize` (loraq/layers.hpp,
// loraq/recipe.hpp), so that a torch module and its safetensors checkpoint select the same layers.
#include <cstdint>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "loraq/error.hpp"
#include "loraq/layers.hpp"
#include "loraq/methods.hpp"
#include "loraq/recipe.hpp"

namespace loraq::python {
namespace {

nb::object format_or_none(const std::optional<Format>& f) {
  if (!f) return nb::none();
  return nb::str(std::string(format_info(*f).name).c_str());
}

}  // namespace

void register_recipes(nb::module_& m) {
  m.def("glob_match", [](const std::string& pattern, const std::string& name) { return glob_match(pattern, name); },
        nb::arg("pattern"), nb::arg("name"), "The recipe glob (docs/recipes.md) matched against a whole tensor name.");
  m.def(
      "select_layers",
      [](const std::filesystem::path& recipe,
         const std::vector<std::tuple<std::string, std::vector<std::int64_t>, bool>>& tensors) {
        const Recipe loaded = load_recipe(recipe);
        std::vector<TensorShape> shapes;
        shapes.reserve(tensors.size());
        for (const auto& [name, shape, is_float] : tensors) shapes.push_back({name, shape, is_float});
        return select_layers(shapes, loaded.layers);
      },
      nb::arg("recipe"), nb::arg("tensors"),
      "The tensor names the recipe file's layer selection picks from `tensors` [(name, shape, is_float)], in their "
      "order, as `loraq quantize` selects them (a selected tensor of non-linear shape raises Error naming it).");
  m.def(
      "recipe_layer",
      [](const std::filesystem::path& recipe, const std::string& layer) {
        const Recipe loaded = load_recipe(recipe);
        const LayerRecipe& r = loaded.for_layer(layer);
        const bool branch = method_info(r.method).uses_branch;
        nb::dict d;
        d["method"] = r.method;
        d["residual"] = std::string(format_info(r.residual_format).name);
        d["rounding"] = r.rounding == Rounding::nearest_even ? "nearest_even" : "nearest_away";
        d["branch"] = branch ? nb::object(nb::str(std::string(format_info(r.branch_format).name).c_str())) : nb::none();
        d["rank"] = r.rank ? nb::object(nb::int_(*r.rank)) : nb::none();
        d["budget"] = r.budget ? nb::object(nb::float_(*r.budget)) : nb::none();
        d["residual_activation"] = format_or_none(r.residual_activation);
        d["branch_activation"] = branch ? format_or_none(r.branch_activation) : nb::none();
        d["intermediate_activation"] = branch ? format_or_none(r.intermediate_activation) : nb::none();
        d["seed"] = r.seed;
        return d;
      },
      nb::arg("recipe"), nb::arg("layer"),
      "The recipe file's entry for the tensor name `layer` (its last matching override, else the defaults) as a "
      "dict: method, residual, rounding, branch, rank, budget, residual_activation, branch_activation, "
      "intermediate_activation (None: 16-bit; the last, the branch's T), seed.");
}

}  // namespace loraq::python
