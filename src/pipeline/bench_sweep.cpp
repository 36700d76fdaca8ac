// `loraq bench`: every (layer, configuration) pair of a sweep, run a few at a time, each finished one
// appended to <output>/rows.jsonl so that an interrupted sweep resumes where it stopped.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "loraq/activations.hpp"
#include "loraq/bench.hpp"
#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "loraq/layers.hpp"
#include "loraq/methods.hpp"
#include "pipeline_util.hpp"
#include "progress.hpp"

namespace loraq {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, separator);) parts.push_back(part);
  if (!text.empty() && text.back() == separator) parts.emplace_back();
  return parts;
}

// A configuration spec as a one-layer recipe, so that the recipe parser checks it and its errors
// read like a recipe's.
std::string spec_as_yaml(const std::string& spec) {
  std::vector<std::string> parts = split(spec, ':');
  // Trailing options: `smooth` (alpha and beta searched), `a1=FMT` / `a2=FMT` (the residual's and the
  // branch's activation formats).
  std::vector<std::string> options;
  while (parts.size() > 2 && (parts.back() == "smooth" || parts.back().starts_with("a1=") || parts.back().starts_with("a2=")))
    options.insert(options.begin(), parts.back()), parts.pop_back();
  const auto fail = [&](const std::string& why) {
    throw Error("configuration '" + spec + "': " + why +
                "; expected METHOD:RESIDUAL for a method without a branch (rtn:sint4) or "
                "METHOD:RESIDUAL:BRANCH:rRANK|bBUDGET (svd_lowrank:sint4:fp16:r32, loraq:sint4:mxint8:b512), then "
                "optionally smooth, a1=FORMAT, a2=FORMAT (svd_lowrank:sint4:fp16:r32:smooth:a1=sint4:a2=sint4)");
  };
  if (parts.size() != 2 && parts.size() != 4) fail("it has " + std::to_string(parts.size()) + " fields");
  for (const std::string& p : parts)
    if (p.empty() || p.find_first_of("{}[],#&*!|>'\"%@`\n ") != std::string::npos) fail("a field is empty or not a name");
  std::string yaml = "name: " + spec + "\nmethod: " + parts[0] + "\nresidual: {format: " + parts[1] + "}\n";
  if (parts.size() == 4) {
    const char kind = parts[3][0];
    if ((kind != 'r' && kind != 'b') || parts[3].size() < 2) fail("the size '" + parts[3] + "' is not rN or bN");
    yaml += "branch: {format: " + parts[2] + ", " + (kind == 'r' ? "rank: " : "budget: ") + parts[3].substr(1) + "}\n";
  }
  std::string activations;
  for (const std::string& o : options) {
    if (o == "smooth") yaml += "smoothing: {alpha: auto, beta: auto}\n";
    else activations += std::string(activations.empty() ? "" : ", ") + (o[1] == '1' ? "residual: " : "branch: ") + o.substr(3);
  }
  if (!activations.empty()) yaml += "activations: {" + activations + "}\n";
  return yaml;
}

// The selected layers of the sweep, in checkpoint order.
std::vector<std::string> bench_layers(const io::Checkpoint& in, const BenchOptions& options) {
  std::vector<TensorShape> shapes;
  for (const io::TensorInfo& t : in.tensors()) shapes.push_back({t.name, t.shape, io::is_float_dtype(t.dtype)});
  std::vector<std::string> selected = select_layers(shapes, options.layers);
  if (options.one_per_shape) {
    std::set<std::vector<std::int64_t>> seen;
    std::erase_if(selected, [&](const std::string& name) { return !seen.insert(in.info(name).shape).second; });
  }
  if (options.max_layers > 0 && selected.size() > std::size_t(options.max_layers)) selected.resize(std::size_t(options.max_layers));
  if (selected.empty())
    throw Error(options.input.string() + ": the layer selection (preset '" + options.layers.preset +
                "') matches no tensor; `loraq inspect` lists the names");
  return selected;
}

// What a resumed sweep must agree with.
std::string plan_text(const io::Checkpoint& in, const std::vector<std::string>& layers,
                      const std::vector<BenchConfig>& configs, const BenchOptions& options) {
  nlohmann::ordered_json plan;
  plan["loraq"] = LORAQ_VERSION;
  nlohmann::ordered_json inputs = nlohmann::ordered_json::array();
  for (const std::string& name : layers) {
    const io::TensorInfo& t = in.info(name);
    inputs.push_back({t.name, io::dtype_name(t.dtype), t.shape, t.size});
  }
  plan["layers"] = inputs;
  nlohmann::ordered_json cs = nlohmann::ordered_json::array();
  for (const BenchConfig& c : configs) {
    // The whole recipe, parameters and seed included, so that a resume with other -p values is refused.
    Recipe recipe;
    if (c.source) recipe = *c.source;
    else recipe.name = c.label, recipe.defaults = c.recipe;
    cs.push_back({{"label", c.label}, {"recipe", nlohmann::ordered_json::parse(recipe.to_json())}});
  }
  plan["configs"] = cs;
  plan["seed"] = options.seed;
  plan["activations"] = options.activations.empty() ? "" : fs::absolute(options.activations).string();
  return plan.dump(1);
}

const LayerRecipe& recipe_for(const BenchConfig& config, const std::string& layer) {
  return config.source ? config.source->for_layer(layer) : config.recipe;
}

// Rows an earlier run of the same plan finished; a torn last line (a killed run) is dropped.
std::map<std::pair<std::size_t, std::size_t>, BenchRow> read_done_rows(const fs::path& rows_file,
                                                                       const std::vector<std::string>& layers,
                                                                       std::size_t config_count) {
  std::map<std::pair<std::size_t, std::size_t>, BenchRow> done;
  const std::vector<std::string> lines = split(read_text_file(rows_file), '\n');
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    try {
      const nlohmann::json j = nlohmann::json::parse(lines[i]);
      BenchRow row;
      const std::size_t layer = j.at("layer_index").get<std::size_t>();
      row.config = j.at("config").get<std::size_t>();
      if (layer >= layers.size() || row.config >= config_count || j.at("layer").get<std::string>() != layers[layer])
        throw Error("the row names no layer or configuration of this sweep");
      row.layer = layers[layer];
      row.out_features = j.at("shape").at(0).get<std::int64_t>();
      row.in_features = j.at("shape").at(1).get<std::int64_t>();
      row.rank = j.at("rank").get<int>();
      row.metrics = metrics_from_json(j.at("metrics"));
      done[{layer, row.config}] = std::move(row);
    } catch (const std::exception& e) {
      if (i + 1 == lines.size() || (i + 2 == lines.size() && lines.back().empty())) break;  // torn tail
      throw Error(fmt::format("{}:{}: unreadable row ({}); remove the folder to start again", rows_file.string(), i + 1,
                              e.what()));
    }
  }
  return done;
}

std::string row_line(std::size_t layer_index, const BenchRow& row) {
  nlohmann::ordered_json j;
  j["layer_index"] = layer_index;
  j["layer"] = row.layer;
  j["shape"] = {row.out_features, row.in_features};
  j["config"] = row.config;
  j["rank"] = row.rank;
  j["metrics"] = metrics_to_json(row.metrics);
  return j.dump() + "\n";
}

// A label without its residual field: "loraq:sint4:mxint8:b512" -> "loraq:mxint8:b512", so that one
// claim token names the same configuration for every residual format.
std::string label_without_residual(const std::string& label) {
  std::vector<std::string> parts = split(label, ':');
  if (parts.size() < 2) return label;
  parts.erase(parts.begin() + 1);
  return fmt::format("{}", fmt::join(parts, ":"));
}

// The configurations a claim token names among those of one residual format: by label, by label
// without the residual, or by method.
std::vector<std::size_t> matching(const std::vector<BenchConfig>& configs, const std::string& token, Format residual) {
  std::vector<std::size_t> found;
  for (std::size_t c = 0; c < configs.size(); ++c)
    if (configs[c].recipe.residual_format == residual &&
        (configs[c].label == token || label_without_residual(configs[c].label) == token ||
         configs[c].recipe.method == token))
      found.push_back(c);
  return found;
}

struct ParsedClaim {
  std::string text;
  Format residual;
  std::vector<std::size_t> configs;  // best first
};

// Each claim, once per residual format where every token names exactly one configuration.
std::vector<ParsedClaim> parse_claims(const std::vector<std::string>& claims, const std::vector<BenchConfig>& configs) {
  std::vector<Format> residuals;
  for (const BenchConfig& c : configs)
    if (std::find(residuals.begin(), residuals.end(), c.recipe.residual_format) == residuals.end())
      residuals.push_back(c.recipe.residual_format);
  std::vector<ParsedClaim> parsed;
  for (const std::string& claim : claims) {
    std::vector<std::string> tokens;
    std::size_t start = 0;
    for (std::size_t at; (at = claim.find("<=", start)) != std::string::npos; start = at + 2)
      tokens.push_back(claim.substr(start, at - start));
    tokens.push_back(claim.substr(start));
    for (std::string& t : tokens) {
      t.erase(0, t.find_first_not_of(' '));
      t.erase(t.find_last_not_of(' ') + 1);
    }
    if (tokens.size() < 2 || std::any_of(tokens.begin(), tokens.end(), [](const std::string& t) { return t.empty(); }))
      throw Error("claim '" + claim + "': expected A<=B[<=C...], each a method name or a configuration label");
    std::size_t evaluated = 0;
    for (const Format residual : residuals) {
      ParsedClaim p{claim, residual, {}};
      for (const std::string& token : tokens) {
        const std::vector<std::size_t> found = matching(configs, token, residual);
        if (found.size() > 1) {
          std::vector<std::string> labels;
          for (std::size_t c : found) labels.push_back(configs[c].label);
          throw Error(fmt::format("claim '{}': '{}' matches {} configurations with residual {} ({}): name one by its label",
                                  claim, token, found.size(), format_info(residual).name, fmt::join(labels, ", ")));
        }
        if (found.empty()) break;
        p.configs.push_back(found[0]);
      }
      if (p.configs.size() == tokens.size()) parsed.push_back(std::move(p)), ++evaluated;
    }
    if (evaluated == 0) {
      // A token that names nothing at all is the likely slip (a typo): name it, and what it could be.
      for (const std::string& token : tokens) {
        const bool named = std::any_of(residuals.begin(), residuals.end(),
                                       [&](Format r) { return !matching(configs, token, r).empty(); });
        if (named) continue;
        std::vector<std::string> methods, labels;
        for (const BenchConfig& c : configs) {
          if (std::find(methods.begin(), methods.end(), c.recipe.method) == methods.end())
            methods.push_back(c.recipe.method);
          labels.push_back(c.label);
        }
        throw Error(fmt::format("claim '{}': '{}' is neither a method nor a configuration label of this sweep "
                                "(methods: {}; labels: {})",
                                claim, token, fmt::join(methods, ", "), fmt::join(labels, ", ")));
      }
      throw Error("claim '" + claim + "': no residual format has a configuration for every one of its tokens");
    }
  }
  return parsed;
}

std::vector<ClaimResult> evaluate_claims(const std::vector<ParsedClaim>& claims, const BenchResult& result,
                                         std::size_t layer_count) {
  const std::size_t n_configs = result.configs.size();
  std::vector<ClaimResult> out;
  for (const ParsedClaim& claim : claims) {
    ClaimResult r;
    r.claim = claim.text;
    r.residual = std::string(format_info(claim.residual).name);
    for (std::size_t c : claim.configs) r.labels.push_back(result.configs[c].label);
    std::vector<double> weighted(claim.configs.size(), 0.0);
    for (std::size_t layer = 0; layer < layer_count; ++layer) {
      const BenchRow* first = &result.rows[layer * n_configs];
      std::string failure;
      for (std::size_t k = 0; k < claim.configs.size(); ++k) {
        const BenchRow& row = first[claim.configs[k]];
        weighted[k] += row.metrics.relative_error * double(row.out_features * row.in_features);
        if (k > 0) {
          const BenchRow& better = first[claim.configs[k - 1]];
          if (better.metrics.relative_error > row.metrics.relative_error)
            failure += fmt::format("{}{} {:.4e} > {} {:.4e}", failure.empty() ? "" : "; ", r.labels[k - 1],
                                   better.metrics.relative_error, r.labels[k], row.metrics.relative_error);
        }
      }
      ++r.layers;
      if (failure.empty()) ++r.holding;
      else r.failures.push_back(first->layer + ": " + failure);
    }
    r.holds_in_aggregate = std::is_sorted(weighted.begin(), weighted.end());
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

BenchConfig parse_bench_config(const std::string& spec) {
  const Recipe recipe = parse_recipe(spec_as_yaml(spec), "configuration '" + spec + "'");
  return {spec, recipe.defaults, std::nullopt};
}

std::vector<BenchConfig> bench_grid(const std::vector<std::string>& methods, const std::vector<std::string>& residuals,
                                    const std::vector<std::string>& branches, const std::vector<std::string>& sizes) {
  std::vector<BenchConfig> configs;
  for (const std::string& method : methods)
    for (const std::string& residual : residuals) {
      if (!method_info(method).uses_branch) {
        configs.push_back(parse_bench_config(method + ":" + residual));
        continue;
      }
      if (branches.empty() || sizes.empty())
        throw Error("method '" + method + "' has a low-rank branch: give branch formats and ranks (rN) or budgets (bN)");
      for (const std::string& branch : branches)
        for (const std::string& size : sizes) configs.push_back(parse_bench_config(method + ":" + residual + ":" + branch + ":" + size));
    }
  return configs;
}

void set_bench_param(std::vector<BenchConfig>& configs, const std::string& param, double value) {
  bool used = false;
  for (BenchConfig& c : configs) {
    if (c.source) continue;  // a recipe file says its own parameters
    const MethodParam* p = find_param(method_info(c.recipe.method), param);
    if (!p) continue;
    if (value < p->min_value || value > p->max_value || (p->type != ParamType::real && value != std::floor(value)))
      throw Error(fmt::format("parameter {}={}: method '{}' expects {} in [{}, {}] ({})", param, value, c.recipe.method,
                              p->type == ParamType::real ? "a number" : "an integer", p->min_value, p->max_value,
                              p->description));
    c.recipe.params[param] = value;
    used = true;
  }
  if (!used) throw Error("parameter '" + param + "' belongs to no method of the sweep's configurations");
}

BenchResult run_bench(const BenchOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.configs.empty()) throw Error("loraq bench: no configurations to run");
  std::set<std::string> labels;
  for (const BenchConfig& c : options.configs)
    if (!labels.insert(c.label).second) throw Error("configuration '" + c.label + "' is given twice");

  const io::Checkpoint in(options.input);
  const std::vector<std::string> layers = bench_layers(in, options);
  BenchResult result;
  result.configs = options.configs;
  for (BenchConfig& c : result.configs)
    if (!c.source) c.recipe.seed = options.seed;
  const std::vector<ParsedClaim> claims = parse_claims(options.claims, result.configs);
  for (const std::string& name : layers)  // every rank and budget fits every layer, before any work
    for (const BenchConfig& c : result.configs)
      layer_branch_rank(recipe_for(c, name), name, in.info(name).shape[0], in.info(name).shape[1]);
  std::optional<ActivationFile> activations;
  if (!options.activations.empty()) activations.emplace(options.activations);
  for (const std::string& name : layers)
    for (const BenchConfig& c : result.configs)
      check_layer_activations(activations ? &*activations : nullptr, recipe_for(c, name), name, in.info(name).shape[1]);

  // The output folder: plan.json says what the rows in rows.jsonl belong to.
  const fs::path plan_file = options.output / "plan.json", rows_file = options.output / "rows.jsonl";
  const std::string plan = plan_text(in, layers, result.configs, options);
  if (fs::exists(plan_file)) {
    if (!options.resume)
      throw Error(options.output.string() + " holds an earlier sweep: pass --resume to continue it, or remove the folder");
    if (read_text_file(plan_file) != plan)
      throw Error(options.output.string() + ": the earlier sweep had other layers, configurations, seed or loraq "
                                            "version; remove the folder to start again");
  } else {
    fs::create_directories(options.output);
    write_text_file_atomic(plan_file, plan);
    if (fs::exists(rows_file)) fs::remove(rows_file);
  }
  auto done = read_done_rows(rows_file, layers, result.configs.size());
  // Rewritten without a torn last line, so that the rows appended next start on a line of their own.
  std::string kept;
  for (const auto& [key, row] : done) kept += row_line(key.first, row);
  write_text_file_atomic(rows_file, kept);

  struct Job {
    std::size_t layer, config;
  };
  std::vector<Job> pending;
  std::uint64_t total_params = 0, done_params = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const std::vector<std::int64_t>& shape = in.info(layers[l]).shape;
    const auto params = std::uint64_t(shape[0] * shape[1]);
    for (std::size_t c = 0; c < result.configs.size(); ++c) {
      total_params += params;
      if (done.count({l, c})) done_params += params;
      else pending.push_back({l, c});
    }
  }

  const std::size_t total_jobs = layers.size() * result.configs.size();
  Progress progress("bench", total_jobs, total_params, total_jobs - pending.size(), done_params,
                    !options.progress ? (Progress::stderr_is_terminal() ? Progress::Style::bar : Progress::Style::lines)
                    : *options.progress ? Progress::Style::bar : Progress::Style::quiet,
                    "(layer, configuration) pairs");
  const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  const int in_flight = std::max(1, std::min({threads, options.jobs_in_flight, int(pending.size())}));
  const int threads_per_job = std::max(1, threads / in_flight);
  omp_set_max_active_levels(2);
  std::FILE* rows_out = std::fopen(rows_file.c_str(), "ab");
  if (!rows_out) throw Error(rows_file.string() + ": cannot open for appending");
  std::mutex mutex;
  std::exception_ptr error;
  std::atomic<bool> failed{false};
#pragma omp parallel for schedule(dynamic, 1) num_threads(in_flight)
  for (std::size_t k = 0; k < pending.size(); ++k) {
    if (failed.load()) continue;
    try {
      const Job job = pending[k];
      const std::string& name = layers[job.layer];
      const std::vector<std::int64_t>& shape = in.info(name).shape;
      const std::vector<float> weight = read_weight(in, name);
      LayerInput input;
      input.name = name;
      input.weight = weight;
      input.out_features = shape[0];
      input.in_features = shape[1];
      input.recipe = &recipe_for(result.configs[job.config], name);
      input.codec = {input.recipe->rounding, std::nullopt, threads_per_job};
      input.accelerator = options.accelerator;
      const LayerActivations captured =
          read_layer_activations(activations ? &*activations : nullptr, *input.recipe, name, input.in_features);
      captured.attach(input);
      const BenchRow row{name, input.out_features, input.in_features, job.config,
                         layer_branch_rank(*input.recipe, name, shape[0], shape[1]), quantize_layer(input).metrics};
      const std::string line = row_line(job.layer, row);
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (std::fwrite(line.data(), 1, line.size(), rows_out) != line.size() || std::fflush(rows_out) != 0)
          throw Error(rows_file.string() + ": write failed (disk full?)");
        done[{job.layer, job.config}] = row;
      }
      progress.layer_done(name, std::uint64_t(shape[0] * shape[1]),
                          fmt::format("{} rel.err {:.3e} {:.2f}s", result.configs[job.config].label,
                                      row.metrics.relative_error, row.metrics.seconds));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!error) error = std::current_exception();
      failed = true;
    }
  }
  std::fclose(rows_out);
  if (error) {
    progress.abandon();
    try {
      std::rethrow_exception(error);
    } catch (const Error& e) {
      throw Error(fmt::format("{}\nthe finished rows are kept in {}: run again with --resume", e.what(),
                              rows_file.string()));
    }
  }
  progress.finish();

  for (std::size_t l = 0; l < layers.size(); ++l)
    for (std::size_t c = 0; c < result.configs.size(); ++c) result.rows.push_back(done.at({l, c}));
  result.claims = evaluate_claims(claims, result, layers.size());
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.files = write_bench_reports(result, options.output, "loraq bench: " + options.input.filename().string());
  return result;
}

}  // namespace loraq
