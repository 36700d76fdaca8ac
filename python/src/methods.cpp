// Quantization methods from Python: the method table and one weight quantized with it
// (loraq/methods.hpp, loraq/quantized_layer.hpp).
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "loraq/accelerator.hpp"
#include "loraq/cuda.hpp"
#include "loraq/error.hpp"
#include "loraq/methods.hpp"
#include "loraq/quantized_layer.hpp"
#include "loraq/recipe.hpp"

namespace loraq::python {
namespace {

std::string_view type_name(ParamType type) {
  switch (type) {
    case ParamType::integer: return "int";
    case ParamType::real: return "float";
    case ParamType::boolean: return "bool";
  }
  return "?";
}

nb::object param_value(const MethodParam& p, double value) {
  switch (p.type) {
    case ParamType::integer: return nb::int_(static_cast<long long>(value));
    case ParamType::real: return nb::float_(value);
    case ParamType::boolean: return nb::bool_(value != 0);
  }
  return nb::none();
}

nb::dict method_dict(const MethodInfo& m) {
  nb::dict d;
  d["name"] = std::string(m.name);
  d["description"] = std::string(m.description);
  d["uses_branch"] = m.uses_branch;
  d["needs_activations"] = m.needs_activations;
  nb::dict params;
  for (const MethodParam& p : m.params) {
    nb::dict info;
    info["type"] = std::string(type_name(p.type));
    info["default"] = param_value(p, p.default_value);
    info["min"] = param_value(p, p.min_value);
    info["max"] = param_value(p, p.max_value);
    info["description"] = std::string(p.description);
    params[std::string(p.name).c_str()] = info;
  }
  d["params"] = params;
  return d;
}

std::string number_text(double v) {
  std::string text = std::to_string(v);
  text.erase(text.find_last_not_of('0') + 1);
  if (!text.empty() && text.back() == '.') text.pop_back();
  return text;
}

std::string param_names(const MethodInfo& m) {
  std::string names;
  for (const MethodParam& p : m.params) names += (names.empty() ? "" : ", ") + std::string(p.name);
  return names.empty() ? "it has no parameters" : "valid parameters: " + names;
}

// One keyword parameter, checked against the method table as a recipe's `params` entry is.
double param_from_python(const MethodInfo& method, const std::string& key, nb::handle value) {
  const MethodParam* p = find_param(method, key);
  if (!p) throw Error("unknown parameter '" + key + "' of method '" + std::string(method.name) + "'; " + param_names(method));
  const std::string where = "parameter '" + key + "' of method '" + std::string(method.name) + "'";
  const bool is_bool = nb::isinstance<nb::bool_>(value), is_int = nb::isinstance<nb::int_>(value) && !is_bool;
  const bool is_float = nb::isinstance<nb::float_>(value);
  double v = 0;
  switch (p->type) {
    case ParamType::boolean:
      if (!is_bool) throw Error(where + ": expected a bool, got " + nb::repr(value).c_str());
      return nb::cast<bool>(value) ? 1.0 : 0.0;
    case ParamType::integer:
      if (!is_int) throw Error(where + ": expected an int, got " + nb::repr(value).c_str());
      v = static_cast<double>(nb::cast<long long>(value));
      break;
    case ParamType::real:
      if (!is_int && !is_float) throw Error(where + ": expected a number, got " + nb::repr(value).c_str());
      v = nb::cast<double>(value);
      break;
  }
  if (!(v >= p->min_value && v <= p->max_value))
    throw Error(where + ": expected a value in [" + number_text(p->min_value) + ", " + number_text(p->max_value) +
                "], got " + nb::repr(value).c_str() + " (" + std::string(p->description) + ")");
  return v;
}

// The layer recipe that keyword arguments describe, with the checks load_recipe applies to a file.
LayerRecipe recipe_from_arguments(const std::string& method_name, const std::string& residual,
                                  const std::optional<std::string>& branch, std::optional<int> rank,
                                  std::optional<double> budget, std::uint64_t seed, const nb::dict& params,
                                  Rounding rounding) {
  const MethodInfo& method = method_info(method_name);
  if (method.needs_activations)
    throw Error("method '" + method_name + "' needs captured activations; quantize_weight does not take them yet");
  LayerRecipe r;
  r.method = method_name;
  r.residual_format = parse_format(residual);
  r.rounding = rounding;
  r.seed = seed;
  if (method.uses_branch) {
    if (branch) r.branch_format = parse_format(*branch);
    if (rank && budget) throw Error("method '" + method_name + "': give rank or budget, not both");
    if (!rank && !budget)
      throw Error("method '" + method_name + "' has a low-rank branch: give rank (an integer >= 1) or budget (branch "
                  "bits per input channel > 0)");
    if (rank && *rank < 1) throw Error("method '" + method_name + "': rank must be >= 1, got " + std::to_string(*rank));
    if (budget && !(*budget > 0))
      throw Error("method '" + method_name + "': budget must be > 0 bits per channel, got " + number_text(*budget));
    r.rank = rank;
    r.budget = budget;
  } else if (branch || rank || budget) {
    throw Error("method '" + method_name + "' has no low-rank branch: remove " +
                (branch ? "branch" : rank ? "rank" : "budget"));
  }
  for (const MethodParam& p : method.params) r.params[std::string(p.name)] = p.default_value;
  for (auto [key, value] : params) {
    const std::string name = nb::cast<std::string>(key);
    r.params[name] = param_from_python(method, name, value);
  }
  return r;
}

// One quantized weight and what made it.
struct QuantizedWeight {
  QuantizedLayer layer;
  LayerRecipe recipe;
  int rank = 0;
};

NumpyArray<float> matrix_of(const PackedMatrix& p) {
  std::vector<float> values;
  {
    nb::gil_scoped_release release;
    values = unpack(p);
  }
  return to_numpy(std::move(values), {std::size_t(p.rows), std::size_t(p.cols)});
}

// Captured activations for one layer (docs/activations.md): input rows [n, in] and per-channel
// absmax [in], both optional. Smoothing recipes need them; with rows, the metrics add the output SQNR.
struct Captured {
  std::optional<FloatArray> rows, absmax;
};

}  // namespace

// Opened once per GPU for the life of the process: opening one costs more than a small layer's loops,
// and loraq.torch.quantize_module quantizes layer after layer. Never destroyed: a CUDA context must
// not be torn down by a static destructor after the driver has shut down at exit.
const Accelerator* accelerator_for(const std::string& device, const std::string& what) {
  const int n = cuda::device_number(device, 0, what + ": device");
  if (n < 0) return nullptr;
  static std::mutex mutex;
  static auto* opened = new std::map<int, std::unique_ptr<Accelerator>>;
  const std::lock_guard lock(mutex);
  std::unique_ptr<Accelerator>& slot = (*opened)[n];
  if (!slot) slot = cuda::make_accelerator(n);  // throws, naming the cause, without a GPU or CUDA
  return slot.get();
}

namespace {

QuantizedWeight run_layer(const FloatArray& weight, LayerRecipe recipe, const std::string& name, int threads,
                          const Captured& captured, const std::string& device) {
  if (weight.ndim() != 2)
    throw Error("quantize_weight: expected a 2-D weight [out_features, in_features], got " + std::to_string(weight.ndim()) +
                "-D shape " + shape_text(weight));
  if (threads < 0) throw Error("threads must be >= 0 (0: every core), got " + std::to_string(threads));
  const MatrixShape s = matrix_shape(weight, "quantize_weight");
  if (s.rows == 0 || s.cols == 0) throw Error("quantize_weight: the weight " + shape_text(weight) + " is empty");
  QuantizedWeight result;
  result.recipe = std::move(recipe);
  LayerInput input;
  input.name = name;
  input.weight = values_of(weight);
  input.out_features = s.rows;
  input.in_features = s.cols;
  input.recipe = &result.recipe;
  input.codec.rounding = result.recipe.rounding;
  input.codec.threads = threads;
  input.accelerator = accelerator_for(device, "quantize_weight");
  if (captured.rows) {
    const MatrixShape r = matrix_shape(*captured.rows, "quantize_weight: activations");
    if (captured.rows->ndim() != 2 || r.cols != s.cols || r.rows < 1)
      throw Error("quantize_weight: activations of layer '" + name + "' have shape " + shape_text(*captured.rows) +
                  ", expected [n, " + std::to_string(s.cols) + "]");
    input.activations = values_of(*captured.rows);
    input.activation_rows = r.rows;
  }
  if (captured.absmax) {
    if (captured.absmax->ndim() != 1 || std::int64_t(captured.absmax->shape(0)) != s.cols)
      throw Error("quantize_weight: absmax of layer '" + name + "' has shape " + shape_text(*captured.absmax) +
                  ", expected [" + std::to_string(s.cols) + "]");
    input.activation_absmax = values_of(*captured.absmax);
  }
  {
    nb::gil_scoped_release release;
    require_finite(input.weight, s.cols, "quantize_weight: weight '" + name + "'");
    require_finite(input.activations, s.cols, "quantize_weight: activations of '" + name + "'");
    require_finite(input.activation_absmax, s.cols, "quantize_weight: absmax of '" + name + "'");
    result.layer = quantize_layer(input);
  }
  result.rank = result.layer.branch ? int(result.layer.branch->down.rows) : 0;
  return result;
}

}  // namespace

void register_methods(nb::module_& m) {
  m.def(
      "methods",
      [] {
        nb::typed<nb::list, nb::dict> out;
        for (const MethodInfo& info : all_methods()) out.append(method_dict(info));
        return out;
      },
      "Every quantization method of the method table as a dict: name, description, uses_branch, "
      "needs_activations, params {name: {type, default, min, max, description}}.");
  m.def("method_info", [](const std::string& name) { return method_dict(method_info(name)); }, nb::arg("name"),
        "One method as a dict; raises Error listing the known methods for unknown names.");

  nb::class_<QuantizedWeight>(m, "QuantizedWeight",
                              "W ~ Q1(residual) + Q2(up) @ Q2(down): the packed parts, their float32 values and the "
                              "metrics. The arrays are computed from the packed parts on each access.")
      .def_prop_ro("method", [](const QuantizedWeight& q) { return q.recipe.method; })
      .def_prop_ro("residual_format",
                   [](const QuantizedWeight& q) { return std::string(format_info(q.layer.residual.format).name); })
      .def_prop_ro("branch_format",
                   [](const QuantizedWeight& q) -> std::optional<std::string> {
                     if (!q.layer.branch) return std::nullopt;
                     return std::string(format_info(q.layer.branch->down.format).name);
                   })
      .def_ro("rank", &QuantizedWeight::rank, "the branch rank; 0 without a branch")
      .def_prop_ro("out_features", [](const QuantizedWeight& q) { return q.layer.out_features; })
      .def_prop_ro("in_features", [](const QuantizedWeight& q) { return q.layer.in_features; })
      .def_prop_ro("residual", [](const QuantizedWeight& q) { return matrix_of(q.layer.residual); },
                   nb::rv_policy::move, "Q1's values, float32 [out, in]")
      .def_prop_ro(
          "down",
          [](const QuantizedWeight& q) -> std::optional<NumpyArray<float>> {
            if (!q.layer.branch) return std::nullopt;
            return matrix_of(q.layer.branch->down);
          },
          nb::rv_policy::move, "the branch's down factor in Q2, float32 [rank, in]; None without a branch")
      .def_prop_ro(
          "up",
          [](const QuantizedWeight& q) -> std::optional<NumpyArray<float>> {
            if (!q.layer.branch) return std::nullopt;
            return matrix_of(q.layer.branch->up);
          },
          nb::rv_policy::move, "the branch's up factor in Q2, float32 [out, rank]; None without a branch")
      // Views of this object's packed parts (no copy; they keep it alive).
      .def_prop_ro("packed_residual", [](const QuantizedWeight& q) { return &q.layer.residual; },
                   nb::rv_policy::reference_internal)
      .def_prop_ro(
          "packed_down",
          [](const QuantizedWeight& q) -> const PackedMatrix* { return q.layer.branch ? &q.layer.branch->down : nullptr; },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "packed_up",
          [](const QuantizedWeight& q) -> const PackedMatrix* { return q.layer.branch ? &q.layer.branch->up : nullptr; },
          nb::rv_policy::reference_internal)
      .def(
          "effective_weight",
          [](const QuantizedWeight& q) {
            std::vector<float> w;
            {
              nb::gil_scoped_release release;
              w = effective_weight(q.layer);
            }
            return to_numpy(std::move(w), {std::size_t(q.layer.out_features), std::size_t(q.layer.in_features)});
          },
          "The weight the layer stands for, float32 [out, in]: residual + up @ down summed rank by rank in fp32 "
          "(the bytes `loraq export --dequantized --dtype F32` writes).")
      .def_prop_ro(
          "metrics",
          [](const QuantizedWeight& q) {
            nb::dict d;
            d["relative_error"] = q.layer.metrics.relative_error;
            d["branch_quant_error"] = q.layer.metrics.branch_quant_error;
            d["bits_per_value"] = q.layer.metrics.bits_per_value;
            d["seconds"] = q.layer.metrics.seconds;
            const LayerMetrics& m = q.layer.metrics;
            if (m.output_sqnr_db) d["output_sqnr_db"] = *m.output_sqnr_db;
            if (m.smoothing_alpha) d["smoothing_alpha"] = *m.smoothing_alpha;
            if (m.smoothing_beta) d["smoothing_beta"] = *m.smoothing_beta;
            return d;
          },
          "relative_error ||W_eff - W||_F / ||W||_F, branch_quant_error ||Q2(B) - B||_F / ||W||_F, bits_per_value "
          "(residual, branch and scales over out x in) and seconds; with activations output_sqnr_db, and when "
          "smoothed smoothing_alpha and smoothing_beta")
      .def_prop_ro(
          "smooth",
          [](const QuantizedWeight& q) -> std::optional<NumpyArray<float>> {
            if (q.layer.smooth.empty()) return std::nullopt;
            std::vector<float> s = q.layer.smooth;
            return to_numpy(std::move(s), {s.size()});
          },
          nb::rv_policy::move,
          "the smoothing vector s [in] (the residual and branch quantize W diag(s); inputs are divided by s); "
          "None when not smoothed")
      .def("__repr__", [](const QuantizedWeight& q) {
        std::string text = "QuantizedWeight(method='" + q.recipe.method + "', shape=(" +
                           std::to_string(q.layer.out_features) + ", " + std::to_string(q.layer.in_features) +
                           "), residual='" + std::string(format_info(q.layer.residual.format).name) + "'";
        if (q.layer.branch)
          text += ", branch='" + std::string(format_info(q.layer.branch->down.format).name) +
                  "', rank=" + std::to_string(q.rank);
        return text + ", relative_error=" + std::to_string(q.layer.metrics.relative_error) + ")";
      });

  m.def(
      "quantize_weight",
      [](const FloatArray& weight, const std::string& method, const std::string& residual,
         const std::optional<std::string>& branch, std::optional<int> rank, std::optional<double> budget,
         std::uint64_t seed, const nb::dict& params, const std::string& rounding, int threads, const std::string& name,
         std::optional<FloatArray> rows, std::optional<FloatArray> absmax, const std::string& device) {
        return run_layer(weight, recipe_from_arguments(method, residual, branch, rank, budget, seed, params,
                                                       parse_rounding(rounding)),
                         name, threads, {rows, absmax}, device);
      },
      nb::arg("weight").noconvert(), nb::arg("method"), nb::arg("residual"), nb::arg("branch").none(),
      nb::arg("rank").none(), nb::arg("budget").none(), nb::arg("seed"), nb::arg("params"), nb::arg("rounding"),
      nb::arg("threads"), nb::arg("name"), nb::arg("activations").noconvert().none() = nb::none(),
      nb::arg("absmax").noconvert().none() = nb::none(), nb::arg("device") = "cpu",
      "Quantizes one weight [out, in] as a recipe with these keys would (loraq.quantize_weight wraps this).");
  m.def(
      "quantize_weight_recipe",
      [](const FloatArray& weight, const std::filesystem::path& recipe, const std::string& layer, int threads,
         std::optional<FloatArray> rows, std::optional<FloatArray> absmax, const std::string& device) {
        const Recipe loaded = load_recipe(recipe);
        return run_layer(weight, loaded.for_layer(layer), layer, threads, {rows, absmax}, device);
      },
      nb::arg("weight").noconvert(), nb::arg("recipe"), nb::arg("layer"), nb::arg("threads"),
      nb::arg("activations").noconvert().none() = nb::none(), nb::arg("absmax").noconvert().none() = nb::none(),
      nb::arg("device") = "cpu",
      "Quantizes one weight with the recipe file's entry for the tensor name `layer` (its last matching "
      "override, else its defaults).");
}

}  // namespace loraq::python
