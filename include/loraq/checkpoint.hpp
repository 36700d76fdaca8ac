// Model checkpoints as users hold them: one safetensors file, a sharded set with its
// "*.safetensors.index.json", or a diffusers folder holding either (diffusion_pytorch_model*).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "loraq/io.hpp"

namespace loraq::io {

// Every tensor of a checkpoint, whichever shard holds it; shards are memory-mapped, nothing is copied.
class Checkpoint {
 public:
  // A .safetensors file, an .index.json file, or a folder with exactly one of
  // diffusion_pytorch_model.safetensors / diffusion_pytorch_model.safetensors.index.json /
  // model.safetensors / model.safetensors.index.json. Throws Error naming the path and what is wrong
  // (index naming a missing shard, a tensor listed in the index but absent from its shard or
  // present in two shards, shards holding tensors the index does not list, ...).
  explicit Checkpoint(const std::filesystem::path& path);
  ~Checkpoint();
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // all shards, sorted by name
  const TensorInfo& info(std::string_view name) const;                 // throws Error naming the tensor
  std::span<const std::byte> bytes(std::string_view name) const;
  // Drops the pages of a tensor read and done with from the resident set (SafetensorsFile::release).
  void release(std::string_view name) const;
  const std::filesystem::path& file_of(std::string_view name) const;   // the shard holding a tensor
  // __metadata__ of the first shard (by file name); for sharded checkpoints also the index's
  // "metadata" entries that the shard does not have (non-string values as compact JSON text), except
  // "total_size", which describes the index and is recomputed by any writer.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::uint64_t total_bytes() const;  // sum of tensor sizes
  std::size_t shard_count() const { return shards_.size(); }
  // The files it reads: the shards and, for a sharded checkpoint, its index.
  const std::vector<std::filesystem::path>& files() const { return files_; }

 private:
  std::filesystem::path path_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::vector<TensorInfo> tensors_;
  std::vector<std::size_t> shard_of_;  // parallel to tensors_
  std::map<std::string, std::string> metadata_;
  std::vector<std::filesystem::path> files_;
};

// Throws Error naming both paths when a checkpoint written at `output` (CheckpointWriter's file or
// folder) would replace or remove a file that `input` reads: an output file that is one of them, or an
// output folder that holds one (the writer replaces and removes the files of its base name there, and
// the commands write config.json and their reports beside them). `what` names the command.
void refuse_output_over_input(const Checkpoint& input, const std::filesystem::path& output, std::string_view what);

struct CheckpointLayout {
  // Tensor bytes per shard (headers not counted, as Hugging Face counts): diffusers' ModelMixin.save_pretrained
  // default max_shard_size="10GB", which it reads as 10 * 10^9 bytes. Must be positive.
  std::uint64_t max_shard_bytes = 10'000'000'000;
  // Shard files are "<base>.safetensors" or "<base>-00001-of-00003.safetensors" ...; a plain file name.
  std::string base_name = "diffusion_pytorch_model";
};

// Writes a checkpoint tensor by tensor. If `path` ends in ".safetensors" the output is that one file.
// Otherwise `path` is a folder (created if needed): "<base>.safetensors" when everything fits in one
// shard, else "<base>-00001-of-0000N.safetensors" ... plus "<base>.safetensors.index.json" in the
// Hugging Face format ({"metadata": {"total_size": N}, "weight_map": {tensor: file}}), written as
// diffusers writes it (sorted keys, indent 2, ASCII, final newline). Every shard carries `metadata`
// as its __metadata__. Shards are filled deterministically: tensors sorted by name, a new shard when
// the next tensor would take the current one past max_shard_bytes, a tensor larger than that alone
// in its shard; so the same tensors give the same bytes whatever the order of `tensors`.
// Every file is written under a temporary name and gets its final name in finish(): the shards, then
// the index, then the older files of the folder with this base name that the new checkpoint does not
// reuse ("<base>.safetensors", "<base>-NNNNN-of-NNNNN.safetensors", the index) are removed, so that
// the folder holds exactly one checkpoint. A writer destroyed before finish() removes its temporary
// files (and the folder, if it created it and it is empty) and leaves any previous output untouched.
class CheckpointWriter {
 public:
  CheckpointWriter(std::filesystem::path path, std::vector<TensorSpec> tensors,
                   std::map<std::string, std::string> metadata, CheckpointLayout layout = {});
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // The order write() must follow (shard by shard, each shard in its SafetensorsWriter order).
  const std::vector<TensorSpec>& order() const { return order_; }
  void write(std::string_view name, std::span<const std::byte> bytes);  // the byte count must match the spec
  void finish();  // throws Error when a tensor is missing or a file cannot be written, renamed or removed
  // The files finish() produced (or will produce), relative to the folder; one entry for a file output.
  std::vector<std::filesystem::path> files() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<TensorSpec> order_;
};

}  // namespace loraq::io
