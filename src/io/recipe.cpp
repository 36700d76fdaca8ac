// Recipes: YAML in, checked LayerRecipes out, canonical JSON for metadata (docs/recipes.md).
//
// Parsing runs in two passes per scope (the top level, each override): first every key is read
// and type-checked into a Patch, whatever order the file gives them in; then the Patch is applied to
// a base LayerRecipe against the method table, where the checks that relate keys live (a branch
// needs a method with a branch, params belong to the method chosen, rank or budget is required).
// Every message is "FILE:LINE: KEY.PATH: what" with 1-based lines.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <climits>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "loraq/error.hpp"
#include "loraq/layers.hpp"
#include "loraq/recipe.hpp"

namespace loraq {
namespace {

constexpr std::array<std::string_view, 11> kTopKeys = {
    "name", "description", "method", "residual", "branch", "activations",
    "smoothing", "params", "seed", "layers", "overrides"};
constexpr std::array<std::string_view, 8> kOverrideKeys = {
    "match", "method", "residual", "branch", "activations", "smoothing", "params", "seed"};
constexpr std::array<std::string_view, 2> kSmoothingKeys = {"alpha", "beta"};
constexpr std::array<std::string_view, 2> kResidualKeys = {"format", "rounding"};
constexpr std::array<std::string_view, 3> kBranchKeys = {"format", "rank", "budget"};
constexpr std::array<std::string_view, 3> kActivationKeys = {"residual", "branch", "intermediate"};
constexpr std::array<std::string_view, 3> kLayersKeys = {"preset", "include", "exclude"};

// The method a recipe gets when it names none.
constexpr std::string_view kDefaultMethod = "rtn";

template <typename Names>
std::string join(const Names& names) {
  std::string text;
  for (const auto& name : names) text += (text.empty() ? "" : ", ") + std::string(name);
  return text;
}

// Shortest text that reads back as the same double ("512", "4.25").
std::string number_text(double value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, result.ptr);
}

int line_of(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.is_null() || mark.line < 0 ? 1 : mark.line + 1;
}

// What a node is, for "expected X, got Y".
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar:
      return node.Tag() == "?" ? "'" + node.Scalar() + "'" : "the string \"" + node.Scalar() + "\"";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
  }
  return "nothing";
}

// One key of a map: its name, value, the 1-based line of the key, and its full dotted path.
struct Entry {
  std::string key;
  YAML::Node value;
  int line = 1;
  std::string path;
};

class Parser {
 public:
  Parser(std::string file, std::span<const MethodInfo> methods) : file_(std::move(file)), methods_(methods) {}

  [[noreturn]] void fail(int line, const std::string& path, const std::string& what) const {
    throw Error(file_ + ":" + std::to_string(line) + ": " + (path.empty() ? "" : path + ": ") + what);
  }

  const MethodInfo* find_method(std::string_view name) const {
    for (const MethodInfo& method : methods_)
      if (method.name == name) return &method;
    return nullptr;
  }
  std::string method_names() const {
    std::vector<std::string_view> names;
    for (const MethodInfo& method : methods_) names.push_back(method.name);
    return join(names);
  }

  // The keys of a map node, each checked against `valid` (all keys pass when `any_key`), with
  // duplicates rejected: yaml-cpp keeps both copies of a repeated key, and which one wins would
  // otherwise depend on who reads the node.
  std::vector<Entry> entries(const YAML::Node& node, const std::string& path, int line,
                             std::span<const std::string_view> valid, bool any_key = false) const {
    if (!node.IsMap())
      fail(line, path, "expected a map" + (any_key ? std::string() : " with keys " + join(valid)) + ", got " +
                           describe(node));
    std::vector<Entry> out;
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      const int key_line = line_of(it->first);
      if (!it->first.IsScalar()) fail(key_line, path, "keys must be strings, got " + describe(it->first));
      Entry entry{it->first.Scalar(), it->second, key_line, (path.empty() ? "" : path + ".") + it->first.Scalar()};
      bool known = any_key;
      for (std::string_view name : valid) known = known || name == entry.key;
      if (!known) fail(key_line, entry.path, "unknown key; valid keys: " + join(valid));
      if (!seen.insert(entry.key).second) fail(key_line, entry.path, "duplicate key");
      out.push_back(std::move(entry));
    }
    return out;
  }

  std::string as_string(const Entry& e) const {
    if (!e.value.IsScalar()) fail(e.line, e.path, "expected a string, got " + describe(e.value));
    return e.value.Scalar();
  }

  // Numbers and booleans must be plain YAML scalars (or carry the matching !!int / !!float /
  // !!bool tag): a quoted "32" is a string, as YAML itself reads it.
  std::string plain_scalar(const Entry& e, std::string_view expected, std::string_view tag) const {
    if (!e.value.IsScalar() || (e.value.Tag() != "?" && e.value.Tag() != tag))
      fail(e.line, e.path, "expected " + std::string(expected) + ", got " + describe(e.value));
    return e.value.Scalar();
  }

  // An integer written without a decimal point or exponent.
  std::int64_t as_integer(const Entry& e) const {
    std::string text = plain_scalar(e, "an integer", "tag:yaml.org,2002:int");
    std::string_view digits = text;
    if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
    std::int64_t value = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec == std::errc::result_out_of_range) fail(e.line, e.path, "integer " + text + " is out of range");
    if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty())
      fail(e.line, e.path, "expected an integer, got " + describe(e.value));
    return value;
  }

  double as_number(const Entry& e) const {
    std::string text = plain_scalar(e, "a number", "tag:yaml.org,2002:float");
    std::string_view digits = text;
    if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
    double value = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty() || !std::isfinite(value))
      fail(e.line, e.path, "expected a finite number, got " + describe(e.value));
    return value;
  }

  bool as_bool(const Entry& e) const {
    const std::string text = plain_scalar(e, "true or false", "tag:yaml.org,2002:bool");
    if (text == "true" || text == "True" || text == "TRUE") return true;
    if (text == "false" || text == "False" || text == "FALSE") return false;
    fail(e.line, e.path, "expected true or false, got " + describe(e.value));
  }

  Format as_format(const Entry& e) const {
    const std::string name = as_string(e);
    try {
      return parse_format(name);
    } catch (const Error& error) {
      fail(e.line, e.path, error.what());
    }
  }

  std::vector<std::string> as_string_list(const Entry& e) const {
    if (!e.value.IsSequence()) fail(e.line, e.path, "expected a list of glob patterns, got " + describe(e.value));
    std::vector<std::string> out;
    for (std::size_t i = 0; i < e.value.size(); ++i) {
      const Entry item{"", e.value[i], line_of(e.value[i]), e.path + "[" + std::to_string(i) + "]"};
      out.push_back(as_string(item));
    }
    return out;
  }

 private:
  std::string file_;
  std::span<const MethodInfo> methods_;
};

// The per-layer keys of one scope (the top level or one override), read but not yet related to
// each other.
struct Patch {
  int line = 1;        // where the scope starts
  std::string prefix;  // "" or "overrides[N]."
  std::optional<std::string> method;
  int method_line = 1;
  std::optional<Format> residual_format;
  std::optional<Rounding> rounding;
  bool has_branch = false;
  int branch_line = 1;
  std::optional<Format> branch_format;
  std::optional<int> rank;
  std::optional<double> budget;
  std::optional<Format> residual_activation;
  std::optional<Format> branch_activation;
  int branch_activation_line = 1;
  std::optional<Format> intermediate_activation;
  int intermediate_activation_line = 1;
  std::optional<std::optional<LayerRecipe::Smoothing>> smoothing;  // set: given (inner nullopt: `off`)
  std::vector<Entry> params;  // checked once the scope's method is known
  std::optional<std::uint64_t> seed;
};

// Reads one per-layer key into the patch; false when `e` is not one.
bool read_layer_key(const Parser& parser, const Entry& e, Patch& patch) {
  if (e.key == "method") {
    patch.method = parser.as_string(e);
    patch.method_line = e.line;
  } else if (e.key == "residual") {
    for (const Entry& sub : parser.entries(e.value, e.path, e.line, kResidualKeys)) {
      if (sub.key == "format") {
        patch.residual_format = parser.as_format(sub);
      } else {
        const std::string mode = parser.as_string(sub);
        if (mode == "ties-even") patch.rounding = Rounding::nearest_even;
        else if (mode == "ties-away") patch.rounding = Rounding::nearest_away;
        else parser.fail(sub.line, sub.path, "unknown rounding '" + mode + "': expected one of ties-even, ties-away");
      }
    }
  } else if (e.key == "branch") {
    patch.has_branch = true;
    patch.branch_line = e.line;
    for (const Entry& sub : parser.entries(e.value, e.path, e.line, kBranchKeys)) {
      if (sub.key == "format") {
        patch.branch_format = parser.as_format(sub);
      } else if (sub.key == "rank") {
        const std::int64_t rank = parser.as_integer(sub);
        if (rank < 1 || rank > INT_MAX)
          parser.fail(sub.line, sub.path, "expected an integer >= 1, got " + std::to_string(rank));
        patch.rank = static_cast<int>(rank);
      } else {
        const double budget = parser.as_number(sub);
        if (!(budget > 0)) parser.fail(sub.line, sub.path, "expected a number > 0 (bits per channel), got " + number_text(budget));
        patch.budget = budget;
      }
    }
    if (patch.rank && patch.budget)
      parser.fail(e.line, e.path, "give rank or budget, not both (budget sets rank = floor(budget / bits per value))");
  } else if (e.key == "activations") {
    for (const Entry& sub : parser.entries(e.value, e.path, e.line, kActivationKeys)) {
      if (sub.key == "residual") {
        patch.residual_activation = parser.as_format(sub);
      } else if (sub.key == "branch") {
        patch.branch_activation = parser.as_format(sub);
        patch.branch_activation_line = sub.line;
      } else {
        patch.intermediate_activation = parser.as_format(sub);
        patch.intermediate_activation_line = sub.line;
      }
    }
  } else if (e.key == "smoothing") {
    if (e.value.IsScalar() && e.value.Scalar() == "off") {
      patch.smoothing = std::optional<LayerRecipe::Smoothing>();
    } else {
      LayerRecipe::Smoothing smoothing;
      for (const Entry& sub : parser.entries(e.value, e.path, e.line, kSmoothingKeys)) {
        if (sub.value.IsScalar() && sub.value.Scalar() == "auto") continue;
        const double v = parser.as_number(sub);
        if (!(v >= 0 && v <= 1)) parser.fail(sub.line, sub.path, "expected auto or a number in [0, 1], got " + number_text(v));
        (sub.key == "alpha" ? smoothing.alpha : smoothing.beta) = v;
      }
      patch.smoothing = smoothing;
    }
  } else if (e.key == "params") {
    patch.params = parser.entries(e.value, e.path, e.line, {}, true);
  } else if (e.key == "seed") {
    // Seeds use the whole uint64 range, beyond as_integer's int64.
    const std::string text = parser.plain_scalar(e, "a non-negative integer", "tag:yaml.org,2002:int");
    std::string_view digits = text;
    if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
    std::uint64_t seed = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), seed);
    if (ec == std::errc::result_out_of_range) parser.fail(e.line, e.path, "seed " + text + " does not fit in 64 bits");
    if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty())
      parser.fail(e.line, e.path, "expected a non-negative integer, got " + describe(e.value));
    patch.seed = seed;
  } else {
    return false;
  }
  return true;
}

std::map<std::string, double> default_params(const MethodInfo& method) {
  std::map<std::string, double> params;
  for (const MethodParam& p : method.params) params[std::string(p.name)] = p.default_value;
  return params;
}

double param_value(const Parser& parser, const Entry& e, const MethodParam& param) {
  double value = 0;
  switch (param.type) {
    case ParamType::integer: value = static_cast<double>(parser.as_integer(e)); break;
    case ParamType::real: value = parser.as_number(e); break;
    case ParamType::boolean: return parser.as_bool(e) ? 1.0 : 0.0;
  }
  if (value < param.min_value || value > param.max_value)
    parser.fail(e.line, e.path, "expected a value in [" + number_text(param.min_value) + ", " +
                                    number_text(param.max_value) + "], got " + number_text(value) + " (" +
                                    std::string(param.description) + ")");
  return value;
}

// `base` with the patch applied. `fresh`: the top level, whose base is LayerRecipe{} and whose params
// always start from the method's defaults.
LayerRecipe apply(const Parser& parser, const LayerRecipe& base, const Patch& patch, bool fresh) {
  LayerRecipe r = base;
  const std::string method_name = patch.method ? *patch.method : fresh ? std::string(kDefaultMethod) : base.method;
  const MethodInfo* method = parser.find_method(method_name);
  if (!method) {
    if (patch.method)
      parser.fail(patch.method_line, patch.prefix + "method",
                  "unknown method '" + method_name + "': expected one of " + parser.method_names());
    parser.fail(patch.line, patch.prefix + "method",
                "required: the default '" + method_name + "' is not in the method table (" + parser.method_names() + ")");
  }
  // A different method has different parameters: start again from its defaults.
  if (fresh || method_name != base.method) r.params = default_params(*method);
  r.method = method_name;

  if (patch.residual_format) r.residual_format = *patch.residual_format;
  if (patch.rounding) r.rounding = *patch.rounding;
  if (patch.residual_activation) r.residual_activation = patch.residual_activation;

  if (patch.has_branch && !method->uses_branch)
    parser.fail(patch.branch_line, patch.prefix + "branch",
                "method '" + method_name + "' has no low-rank branch: remove `branch`");
  if (patch.branch_activation && !method->uses_branch)
    parser.fail(patch.branch_activation_line, patch.prefix + "activations.branch",
                "method '" + method_name + "' has no low-rank branch: remove `activations.branch`");
  if (patch.intermediate_activation && !method->uses_branch)
    parser.fail(patch.intermediate_activation_line, patch.prefix + "activations.intermediate",
                "method '" + method_name + "' has no low-rank branch: remove `activations.intermediate`");
  if (patch.branch_format) r.branch_format = *patch.branch_format;
  // rank and budget are two ways of sizing the same branch: giving one replaces the other.
  if (patch.rank) {
    r.rank = patch.rank;
    r.budget.reset();
  }
  if (patch.budget) {
    r.budget = patch.budget;
    r.rank.reset();
  }
  if (patch.branch_activation) r.branch_activation = patch.branch_activation;
  if (patch.intermediate_activation) r.intermediate_activation = patch.intermediate_activation;
  if (method->uses_branch) {
    if (!r.rank && !r.budget)
      parser.fail(patch.method ? patch.method_line : patch.line, patch.prefix + "method",
                  "method '" + method_name + "' has a low-rank branch: give branch.rank (an integer >= 1) or "
                  "branch.budget (bits per channel > 0)");
  } else {
    // Nothing of a branch survives a switch to a method without one, so that recipes that mean
    // the same compare equal in to_json.
    r.branch_format = LayerRecipe{}.branch_format;
    r.rank.reset();
    r.budget.reset();
    r.branch_activation.reset();
    r.intermediate_activation.reset();
  }

  for (const Entry& e : patch.params) {
    const MethodParam* param = find_param(*method, e.key);
    if (!param) {
      std::vector<std::string_view> names;
      for (const MethodParam& p : method->params) names.push_back(p.name);
      parser.fail(e.line, e.path,
                  "unknown parameter of method '" + method_name + "'; " +
                      (names.empty() ? std::string("it has no parameters") : "valid parameters: " + join(names)));
    }
    r.params[e.key] = param_value(parser, e, *param);
  }
  if (patch.seed) r.seed = *patch.seed;
  if (patch.smoothing) r.smoothing = *patch.smoothing;
  return r;
}

LayerSelection read_layers(const Parser& parser, const Entry& e) {
  LayerSelection selection;
  for (const Entry& sub : parser.entries(e.value, e.path, e.line, kLayersKeys)) {
    if (sub.key == "preset") {
      selection.preset = parser.as_string(sub);
      try {
        layer_preset(selection.preset);
      } catch (const Error& error) {
        parser.fail(sub.line, sub.path, error.what());
      }
    } else if (sub.key == "include") {
      selection.include = parser.as_string_list(sub);
    } else {
      selection.exclude = parser.as_string_list(sub);
    }
  }
  return selection;
}

nlohmann::json number_json(double value) {
  // Whole numbers print as integers, so 512 and 512.0 (or a boolean's 1) give the same text.
  if (value == std::floor(value) && std::fabs(value) < 9007199254740992.0) return static_cast<std::int64_t>(value);
  return value;
}

nlohmann::json format_json(const std::optional<Format>& format) {
  if (!format) return nullptr;
  return std::string(format_info(*format).name);
}

std::string_view rounding_name(Rounding rounding) {
  switch (rounding) {
    case Rounding::nearest_even: return "ties-even";
    case Rounding::nearest_away: return "ties-away";
  }
  return "ties-even";
}

nlohmann::json layer_json(const LayerRecipe& r) {
  nlohmann::json j;
  j["method"] = r.method;
  j["residual"] = {{"format", format_info(r.residual_format).name}, {"rounding", rounding_name(r.rounding)}};
  if (r.rank || r.budget) {
    j["branch"] = {{"format", format_info(r.branch_format).name},
                   {"rank", r.rank ? nlohmann::json(*r.rank) : nlohmann::json(nullptr)},
                   {"budget", r.budget ? number_json(*r.budget) : nlohmann::json(nullptr)}};
  } else {
    j["branch"] = nullptr;  // a method without a branch
  }
  j["activations"] = {{"residual", format_json(r.residual_activation)}, {"branch", format_json(r.branch_activation)}};
  // Only when set, so that the recipes written before this key existed keep their plan text (and
  // a run they started still resumes).
  if (r.intermediate_activation) j["activations"]["intermediate"] = format_json(r.intermediate_activation);
  if (r.smoothing) {
    const auto value = [](const std::optional<double>& v) { return v ? number_json(*v) : nlohmann::json("auto"); };
    j["smoothing"] = {{"alpha", value(r.smoothing->alpha)}, {"beta", value(r.smoothing->beta)}};
  } else {
    j["smoothing"] = nullptr;
  }
  j["params"] = nlohmann::json::object();
  for (const auto& [name, value] : r.params) j["params"][name] = number_json(value);
  j["seed"] = r.seed;
  return j;
}

}  // namespace

int LayerRecipe::branch_rank(std::int64_t in_features) const {
  if (rank) return *rank;
  if (!budget) throw Error("method '" + method + "': the layer recipe has neither branch.rank nor branch.budget");
  const double bits = bits_per_value(branch_format, in_features);
  double r = std::floor(*budget / bits);
  // The quotient is rounded; when the exact ratio is whole (budget 510, 4.25 bits) it may land just
  // below it. The budget is the bound, so check the next rank against it directly.
  if ((r + 1.0) * bits <= *budget * (1.0 + 1e-12)) r += 1.0;
  if (r < 1.0)
    throw Error("branch budget " + number_text(*budget) + " bits per channel buys no rank for in_features " +
                std::to_string(in_features) + ": format " + std::string(format_info(branch_format).name) + " takes " +
                number_text(bits) + " bits per value (rank = floor(budget / bits) = " + number_text(r) +
                "); raise branch.budget or give branch.rank");
  if (r > INT_MAX) throw Error("branch budget " + number_text(*budget) + " gives a rank beyond the int range");
  return static_cast<int>(r);
}

const LayerRecipe& Recipe::for_layer(std::string_view tensor_name) const {
  for (auto it = overrides.rbegin(); it != overrides.rend(); ++it)
    if (glob_match(it->match, tensor_name)) return it->recipe;
  return defaults;
}

std::string Recipe::to_json() const {
  // nlohmann::json objects are std::maps: keys come out sorted, and dump() without indent is compact.
  nlohmann::json j;
  j["name"] = name;
  j["description"] = description;
  j["layers"] = {{"preset", layers.preset}, {"include", layers.include}, {"exclude", layers.exclude}};
  j["defaults"] = layer_json(defaults);
  j["overrides"] = nlohmann::json::array();
  for (const Override& o : overrides) j["overrides"].push_back({{"match", o.match}, {"recipe", layer_json(o.recipe)}});
  return j.dump();
}

Recipe parse_recipe(const std::string& yaml_text, const std::filesystem::path& path_for_messages,
                    std::span<const MethodInfo> methods) {
  const Parser parser(path_for_messages.string(), methods);
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    // The parser notices an unclosed bracket at the end of the text, one line past the last:
    // report the last line instead.
    const int lines = static_cast<int>(std::count(yaml_text.begin(), yaml_text.end(), '\n')) +
                      (yaml_text.empty() || yaml_text.back() == '\n' ? 0 : 1);
    const int line = e.mark.is_null() ? 1 : std::clamp(e.mark.line + 1, 1, std::max(lines, 1));
    parser.fail(line, "", "YAML syntax error: " + e.msg);
  }
  const int root_line = line_of(root);
  if (!root.IsMap())
    parser.fail(root_line, "", "expected a map at the top level with keys " + join(kTopKeys) + ", got " + describe(root));

  Recipe recipe;
  recipe.source = path_for_messages;
  Patch top;
  top.line = root_line;
  bool has_name = false;
  std::optional<Entry> overrides_entry;
  for (const Entry& e : parser.entries(root, "", root_line, kTopKeys)) {
    if (read_layer_key(parser, e, top)) continue;
    if (e.key == "name") {
      recipe.name = parser.as_string(e);
      if (recipe.name.empty()) parser.fail(e.line, e.path, "must not be empty");
      has_name = true;
    } else if (e.key == "description") {
      recipe.description = parser.as_string(e);
    } else if (e.key == "layers") {
      recipe.layers = read_layers(parser, e);
    } else {
      overrides_entry = e;
    }
  }
  if (!has_name) parser.fail(root_line, "name", "required key missing (a string naming the recipe)");
  recipe.defaults = apply(parser, LayerRecipe{}, top, true);

  if (overrides_entry) {
    const Entry& e = *overrides_entry;
    if (!e.value.IsSequence()) parser.fail(e.line, e.path, "expected a list of {match: GLOB, ...}, got " + describe(e.value));
    for (std::size_t i = 0; i < e.value.size(); ++i) {
      const YAML::Node item = e.value[i];
      Patch patch;
      patch.line = line_of(item);
      patch.prefix = "overrides[" + std::to_string(i) + "].";
      const std::string path = "overrides[" + std::to_string(i) + "]";
      std::optional<std::string> match;
      for (const Entry& sub : parser.entries(item, path, patch.line, kOverrideKeys)) {
        if (read_layer_key(parser, sub, patch)) continue;
        match = parser.as_string(sub);  // the only other valid key
      }
      if (!match) parser.fail(patch.line, path + ".match", "required key missing (a glob over tensor names)");
      recipe.overrides.push_back({*match, apply(parser, recipe.defaults, patch, false), patch.line});
    }
  }
  return recipe;
}

Recipe parse_recipe(const std::string& yaml_text, const std::filesystem::path& path_for_messages) {
  return parse_recipe(yaml_text, path_for_messages, all_methods());
}

Recipe load_recipe(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open the recipe file");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(path.string() + ": cannot read the recipe file");
  return parse_recipe(text.str(), path);
}

}  // namespace loraq
