// Whole-model operations: quantize a checkpoint with a recipe, export the effective weights back,
// and compare a quantized checkpoint with its original.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "loraq/dist.hpp"
#include "loraq/format.hpp"
#include "loraq/quantized_checkpoint.hpp"
#include "loraq/quantized_layer.hpp"
#include "loraq/recipe.hpp"

namespace loraq {

// Layers in flight by default with an accelerator: each drives its own stream, and a layer's loop
// waits for its objective every step, so more layers keep the GPU busy while each one waits.
inline constexpr int kDeviceLayersInFlight = 8;

struct QuantizeOptions {
  std::filesystem::path input;   // file, index or diffusers folder
  std::filesystem::path output;  // folder (diffusers layout, sharded when large) or .safetensors file
  Recipe recipe;
  int threads = 0;               // 0: every core; the output bytes never depend on it
  int layers_in_flight = 2;      // layers quantized at once (threads are shared among them): bounds memory
  bool resume = false;           // continue the run whose work folder "<output>.partial" exists
  std::optional<bool> progress;  // true: a redrawn bar; false: silent; nullopt: a bar on a terminal, else a line per layer
  std::uint64_t max_shard_bytes = 5'000'000'000;
  std::optional<Isa> isa;
  // LoRaQ's optimization loops on a device (loraq/accelerator.hpp; `--device cuda`); null: the CPU.
  const Accelerator* accelerator = nullptr;
  // Captured activations (loraq/activations.hpp): every selected layer's input rows, for the
  // output SQNR in the reports. Empty: none.
  std::filesystem::path activations;
  // The processes sharing the run (mpirun: loraq/dist.hpp); null or one process: this one does all.
  // Each process quantizes its share of the layers (balanced by cost) into the common work folder
  // on a shared file system; rank 0 prepares the folder and writes the output, whose bytes are the
  // same as a single process's.
  ProcessGroup* group = nullptr;
};

// One row of the per-layer report.
struct LayerReport {
  std::string name;
  std::int64_t out_features = 0, in_features = 0;
  std::string method, residual_format, branch_format;
  int rank = 0;
  LayerMetrics metrics;
  bool resumed = false;  // done by an earlier, interrupted run
};

struct QuantizeSummary {
  std::vector<LayerReport> layers;  // on rank 0 of a group; other ranks get an empty summary
  std::uint64_t parameters = 0;  // quantized parameters
  double seconds = 0;
  std::vector<std::filesystem::path> reports;  // the report files written
};

// Streams the model layer by layer (peak memory bounded by the layers in flight), writes the
// quantized checkpoint (docs/checkpoint.md), the reports (JSON, CSV, Markdown) beside it, and keeps
// finished layers in "<output>.partial" until the end so that an interrupted run can resume.
QuantizeSummary quantize_model(const QuantizeOptions& options);

// One layer of a quantized checkpoint, as the kernels take it: its table entry, its packed parts and
// the checkpoint's P.bias in fp32 (empty when it has none). `layer` is "P.weight" or "P". Throws
// Error naming the file and the layer (listing a few of the layers it has) when it is not there.
struct StoredLinear {
  QuantizedLayerInfo info;
  QuantizedLayer layer;
  std::vector<float> bias;
};
StoredLinear load_quantized_linear(const std::filesystem::path& quantized, const std::string& layer);

// Writes the effective weights of a quantized checkpoint under their original names and dtype
// (or `dtype` when given: "F32", "F16", "BF16"), every other tensor as it is: what a diffusers user
// loads to evaluate with fake quantization.
void export_dequantized(const std::filesystem::path& quantized, const std::filesystem::path& output,
                        const std::string& dtype = "same", std::uint64_t max_shard_bytes = 5'000'000'000);

// Per-layer relative weight error of a quantized checkpoint against its original.
std::vector<LayerReport> evaluate_quantized(const std::filesystem::path& quantized, const std::filesystem::path& original);

// The report files: "<stem>.json", "<stem>.csv", "<stem>.md".
std::vector<std::filesystem::path> write_reports(const std::vector<LayerReport>& layers, const std::filesystem::path& stem,
                                                 const std::string& title);

}  // namespace loraq
