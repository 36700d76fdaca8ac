// `loraq quantize`: a checkpoint in, a quantized checkpoint out, layer by layer.
//
// Finished layers go to "<output>.partial/layer-NNNNN.safetensors" (each written atomically), so a
// killed run resumes where it stopped. The final checkpoint is assembled from those files and the
// untouched tensors only when every layer is done; it depends on nothing but the input, the recipe
// and the seed, so a resumed run writes the same bytes as an uninterrupted one.
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <thread>

#include "loraq/activations.hpp"
#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "loraq/isa.hpp"
#include "loraq/layers.hpp"
#include "loraq/pipeline.hpp"
#include "loraq/quantized_checkpoint.hpp"
#include "pipeline_util.hpp"
#include "distribute.hpp"
#include "progress.hpp"

namespace loraq {
namespace {

namespace fs = std::filesystem;

fs::path work_dir_of(const fs::path& output) {
  fs::path out = output;
  if (!out.has_filename()) out = out.parent_path();  // "model/" -> "model"
  return fs::path(out.string() + ".partial");
}

fs::path layer_file(const fs::path& work, std::size_t index) {
  return work / fmt::format("layer-{:05}.safetensors", index);
}

// What a resumed run must agree with: the recipe, the input's tensors, the selected layers, and the
// device of LoRaQ's loops (a GPU's layers differ from the CPU's by rounding, so a run finished on
// another device would mix the two; a CPU run's plan has no device key).
std::string plan_text(const Recipe& recipe, const io::Checkpoint& in, const std::vector<QuantizedLayerInfo>& layers,
                      const ActivationFile* activations, const Accelerator* accelerator) {
  nlohmann::ordered_json plan;
  plan["loraq"] = LORAQ_VERSION;
  plan["recipe"] = nlohmann::ordered_json::parse(recipe.to_json());
  if (accelerator) plan["device"] = accelerator->describe();
  if (activations) plan["activations"] = fs::absolute(activations->path()).string();
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  for (const io::TensorInfo& t : in.tensors())
    tensors.push_back({t.name, io::dtype_name(t.dtype), t.shape, t.size});
  plan["input"] = tensors;
  plan["layers"] = nlohmann::ordered_json::parse(encode_layer_table(layers));
  return plan.dump(1);
}

// Opens or creates the work folder; an existing one is only reused with --resume and the same plan.
void prepare_work_dir(const fs::path& work, const std::string& plan, bool resume) {
  const fs::path plan_file = work / "plan.json";
  if (fs::exists(work)) {
    if (!resume)
      throw Error(work.string() + " holds an interrupted run: pass --resume to continue it, or remove the folder");
    if (read_text_file(plan_file) != plan)
      throw Error(work.string() + ": the interrupted run used another recipe, input, device or loraq version; "
                                  "remove the folder to start again");
    return;
  }
  fs::create_directories(work);
  write_text_file_atomic(plan_file, plan);
}

void write_layer_file(const fs::path& path, const std::vector<StoredTensor>& tensors, const LayerMetrics& m) {
  std::vector<io::TensorSpec> specs;
  for (const StoredTensor& t : tensors) specs.push_back(t.spec);
  io::SafetensorsWriter writer(path, specs, {{"loraq.metrics", metrics_to_json(m).dump()}});
  for (const io::TensorSpec& spec : writer.specs())
    for (const StoredTensor& t : tensors)
      if (t.spec.name == spec.name) writer.write(spec.name, t.bytes);
  writer.finish();
}

LayerMetrics read_layer_metrics(const io::SafetensorsFile& file) {
  const auto it = file.metadata().find("loraq.metrics");
  if (it == file.metadata().end()) throw Error(file.path().string() + ": no loraq.metrics metadata");
  try {
    return metrics_from_json(nlohmann::json::parse(it->second));
  } catch (const nlohmann::json::exception& e) {
    throw Error(file.path().string() + ": malformed loraq.metrics metadata: " + e.what());
  }
}

// Why a finished layer's file cannot be used, or empty when it can: it must hold exactly the
// layer's tensors with their dtypes and shapes, and its metrics. A file cut short (a machine that
// lost power after a rename whose data never reached the disk) or damaged since is quantized again
// by --resume, which gives the bytes it should have held, rather than failing the whole resume.
std::string unusable_layer_file(const fs::path& path, const QuantizedLayerInfo& info) {
  try {
    const io::SafetensorsFile file(path);
    const std::vector<io::TensorSpec> specs = layer_tensor_specs(info);
    if (file.tensors().size() != specs.size())
      return fmt::format("it holds {} tensors, the layer has {}", file.tensors().size(), specs.size());
    for (const io::TensorSpec& spec : specs) {
      const io::TensorInfo& t = file.info(spec.name);
      if (t.dtype != spec.dtype || t.shape != spec.shape)
        return fmt::format("its tensor '{}' is not {} [{}]", spec.name, io::dtype_name(spec.dtype),
                           fmt::join(spec.shape, ", "));
    }
    read_layer_metrics(file);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

std::size_t count_layer_files(const fs::path& work, std::size_t layer_count) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < layer_count; ++i) n += fs::exists(layer_file(work, i)) ? 1 : 0;
  return n;
}

// Test hook: a pause after each layer, so that the resume test can kill a run midway.
int debug_layer_delay_ms() {
  const char* v = std::getenv("LORAQ_DEBUG_LAYER_DELAY_MS");
  return v ? std::atoi(v) : 0;
}

void assemble(const QuantizeOptions& options, const io::Checkpoint& in, const std::vector<QuantizedLayerInfo>& layers,
              const std::vector<std::size_t>& pending, const fs::path& work, QuantizeSummary& summary);

}  // namespace

QuantizeSummary quantize_model(const QuantizeOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  // Before any work (quantize_layer would refuse it too, but only once the layers are under way).
  if (options.isa && !isa_available(*options.isa))
    throw Error("--isa " + std::string(isa_name(*options.isa)) + ": instruction set not available on this CPU or build");
  const io::Checkpoint in(options.input);
  io::refuse_output_over_input(in, options.output, "quantize");  // before an hour's work, not at the end
  std::vector<TensorShape> shapes;
  for (const io::TensorInfo& t : in.tensors()) shapes.push_back({t.name, t.shape, io::is_float_dtype(t.dtype)});
  const std::vector<std::string> selected = select_layers(shapes, options.recipe.layers);
  if (selected.empty())
    throw Error(options.input.string() + ": the recipe's layer selection (preset '" + options.recipe.layers.preset +
                "') matches no tensor; `loraq inspect` lists the names");

  std::vector<QuantizedLayerInfo> layers;
  for (const std::string& name : selected) {
    const io::TensorInfo& t = in.info(name);
    const LayerRecipe& r = options.recipe.for_layer(name);
    QuantizedLayerInfo info;
    info.weight_name = name;
    info.shape = t.shape;
    info.out_features = t.shape[0];
    info.in_features = t.shape[1];
    info.dtype = t.dtype;
    info.method = r.method;
    info.residual_format = r.residual_format;
    info.smoothed = r.smoothing.has_value();
    info.residual_activation = r.residual_activation;
    info.branch_activation = r.branch_activation;
    info.intermediate_activation = r.intermediate_activation;
    if (method_info(r.method).uses_branch) {
      info.branch_format = r.branch_format;
      info.rank = layer_branch_rank(r, name, info.out_features, info.in_features);
    }
    layers.push_back(std::move(info));
  }

  const fs::path work = work_dir_of(options.output);
  std::optional<ActivationFile> activations;
  if (!options.activations.empty()) activations.emplace(options.activations);
  for (const QuantizedLayerInfo& l : layers)
    check_layer_activations(activations ? &*activations : nullptr, options.recipe.for_layer(l.weight_name),
                            l.weight_name, l.in_features);
  const std::string plan =
      plan_text(options.recipe, in, layers, activations ? &*activations : nullptr, options.accelerator);
  ProcessGroup* const group = options.group;
  const int rank = group ? group->rank() : 0, ranks = group ? group->size() : 1;
  {
    std::exception_ptr setup_error;
    try {
      if (rank == 0) prepare_work_dir(work, plan, options.resume);
    } catch (...) {
      setup_error = std::current_exception();
    }
    agree(group, setup_error);  // the other ranks wait for the folder
  }

  // Layers still to do, and what earlier runs finished.
  std::vector<std::size_t> pending;
  std::size_t done_layers = 0;
  std::uint64_t done_params = 0, total_params = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto params = std::uint64_t(layers[i].out_features * layers[i].in_features);
    total_params += params;
    const fs::path file = layer_file(work, i);
    const bool exists = fs::exists(file);
    const std::string unusable = exists ? unusable_layer_file(file, layers[i]) : std::string();
    if (exists && unusable.empty()) {
      ++done_layers, done_params += params;
      continue;
    }
    if (exists && rank == 0)  // every rank reads the same files and comes to the same list
      std::fprintf(stderr, "quantize: %s cannot be used (%s): quantizing that layer again\n", file.c_str(),
                   unusable.c_str());
    pending.push_back(i);
  }
  agree(group, nullptr);  // every rank has looked before any rank writes a layer file

  // This process's share of what is left: all of it, or under mpirun a cost-balanced part.
  std::vector<double> costs;
  for (const QuantizedLayerInfo& l : layers) costs.push_back(double(l.out_features * l.in_features) * (1.0 + l.rank));
  const std::vector<std::size_t> pending_before_share = pending;
  pending = share_of(pending, costs, rank, ranks);
  Progress progress(ranks > 1 ? fmt::format("quantize (rank {}/{})", rank, ranks) : "quantize", layers.size(),
                    total_params, rank == 0 ? done_layers : 0, rank == 0 ? done_params : 0,
                    rank != 0 ? Progress::Style::quiet
                    : !options.progress ? (Progress::stderr_is_terminal() ? Progress::Style::bar : Progress::Style::lines)
                    : *options.progress ? Progress::Style::bar : Progress::Style::quiet);
  // A few layers in flight, every thread busy inside them: peak memory stays a few layers whatever
  // the core count, and the codecs and GEMMs parallelize within a layer (their results never depend
  // on their thread count, so neither do the output bytes).
  const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  const int in_flight = std::max(1, std::min({threads, options.layers_in_flight, int(pending.size())}));
  const int threads_per_layer = std::max(1, threads / in_flight);
  omp_set_max_active_levels(2);
  const int delay_ms = debug_layer_delay_ms();
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel for schedule(dynamic, 1) num_threads(in_flight)
  for (std::size_t k = 0; k < pending.size(); ++k) {
    if (failed.load()) continue;
    try {
      const QuantizedLayerInfo& info = layers[pending[k]];
      const std::vector<float> weight = read_weight(in, info.weight_name);
      LayerInput input;
      input.name = info.weight_name;
      input.weight = weight;
      input.out_features = info.out_features;
      input.in_features = info.in_features;
      input.recipe = &options.recipe.for_layer(info.weight_name);
      input.codec = {input.recipe->rounding, options.isa, threads_per_layer};
      input.accelerator = options.accelerator;
      const LayerActivations captured = read_layer_activations(activations ? &*activations : nullptr, *input.recipe,
                                                               info.weight_name, info.in_features);
      captured.attach(input);
      const QuantizedLayer q = quantize_layer(input);
      write_layer_file(layer_file(work, pending[k]), layer_tensors(info, q), q.metrics);
      progress.layer_done(info.weight_name, std::uint64_t(info.out_features * info.in_features),
                          fmt::format("{}x{} rel.err {:.3e} {:.3f}s", info.out_features, info.in_features,
                                      q.metrics.relative_error, q.metrics.seconds));
      if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      failed = true;
    }
  }
  try {
    agree(group, error);  // every rank finished its share, or all learn which failed
  } catch (...) {
    error = std::current_exception();
  }
  if (error) {
    progress.abandon();
    // A run that finished nothing leaves nothing behind; one that did keeps its layers (hours of work
    // for the slower methods) for --resume, and says so.
    const std::size_t kept = count_layer_files(work, layers.size());
    if (kept == 0 && rank == 0) fs::remove_all(work);
    try {
      std::rethrow_exception(error);
    } catch (const Error& e) {
      if (kept == 0) throw;
      throw Error(fmt::format("{}\n{} finished layers are kept in {}: fix the cause and run again with --resume",
                              e.what(), kept, work.string()));
    }
  }
  progress.finish();
  QuantizeSummary summary;
  if (rank != 0) {  // rank 0 assembles; the others wait to learn whether it succeeded
    agree(group, nullptr);
    return summary;
  }
  std::exception_ptr assembly_error;
  try {
    assemble(options, in, layers, pending_before_share, work, summary);
  } catch (...) {
    assembly_error = std::current_exception();
  }
  agree(group, assembly_error);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

namespace {

// Writes the output from the layer files and the untouched tensors, then the reports, and removes
// the work folder.
void assemble(const QuantizeOptions& options, const io::Checkpoint& in, const std::vector<QuantizedLayerInfo>& layers,
              const std::vector<std::size_t>& pending, const fs::path& work, QuantizeSummary& summary) {
  // Assemble: every untouched tensor as it was, every layer from its file.
  std::vector<std::unique_ptr<io::SafetensorsFile>> layer_files;
  std::map<std::string, std::size_t> layer_of_tensor;
  std::vector<io::TensorSpec> specs;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    layer_files.push_back(std::make_unique<io::SafetensorsFile>(layer_file(work, i)));
    for (const io::TensorSpec& spec : layer_tensor_specs(layers[i])) {
      layer_of_tensor[spec.name] = i;
      specs.push_back(spec);
    }
    LayerReport row{layers[i].weight_name, layers[i].out_features, layers[i].in_features, layers[i].method,
                    std::string(format_info(layers[i].residual_format).name),
                    layers[i].branch_format ? std::string(format_info(*layers[i].branch_format).name) : "",
                    layers[i].rank, read_layer_metrics(*layer_files.back()), false};
    row.resumed = std::find(pending.begin(), pending.end(), i) == pending.end();
    summary.layers.push_back(std::move(row));
    summary.parameters += std::uint64_t(layers[i].out_features * layers[i].in_features);
  }
  std::map<std::string, bool> is_layer_weight;
  for (const QuantizedLayerInfo& l : layers) is_layer_weight[l.weight_name] = true;
  for (const io::TensorInfo& t : in.tensors()) {
    if (is_layer_weight.count(t.name)) continue;
    if (layer_of_tensor.count(t.name))
      throw Error(options.input.string() + ": tensor '" + t.name + "' collides with a name of the quantized layout");
    specs.push_back({t.name, t.dtype, t.shape});
  }

  std::map<std::string, std::string> metadata = in.metadata();
  metadata[kFormatVersionKey] = "1";
  metadata[kVersionKey] = LORAQ_VERSION;
  metadata[kRecipeKey] = options.recipe.to_json();
  metadata[kLayersKey] = encode_layer_table(layers);
  io::CheckpointWriter writer(options.output, specs, metadata, {options.max_shard_bytes, "diffusion_pytorch_model"});
  for (const io::TensorSpec& spec : writer.order()) {
    if (const auto it = layer_of_tensor.find(spec.name); it != layer_of_tensor.end()) {
      const io::SafetensorsFile& f = *layer_files[it->second];
      const std::span<const std::byte> bytes = f.bytes(f.info(spec.name));
      writer.write(spec.name, bytes);
      f.release(bytes);
    } else {
      writer.write(spec.name, in.bytes(spec.name));
      in.release(spec.name);
    }
  }
  writer.finish();
  copy_model_config(options.input, options.output);

  summary.reports = write_reports(summary.layers, report_stem(options.output, "quantize_report"),
                                  "loraq quantize: " + options.recipe.name);
  layer_files.clear();
  fs::remove_all(work);
}

}  // namespace

}  // namespace loraq
