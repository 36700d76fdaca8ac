// Checkpoints as users hold them: one safetensors file, or shards with a Hugging Face index.
//
// The index is as untrusted as the shards: it is bounded JSON with no repeated keys, its shard names
// must be plain file names beside it (an index must not reach "../../etc/x"), and it must describe
// the shards exactly: every tensor it lists is in the shard it names and in no other, and no shard
// holds a tensor it does not list. Anything else makes "which bytes is tensor T?" ambiguous.
//
// The writer packs tensors into shards the way huggingface_hub's split_state_dict_into_shards does
// (a new shard when the next tensor would pass the limit, an oversized tensor alone), but over the
// tensors sorted by name so that the same tensors always give the same files, and names them and the
// index as diffusers' save_pretrained does, so diffusers and transformers load the result.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "strict_json.hpp"

namespace loraq::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

[[noreturn]] void fail(const fs::path& path, std::string_view message) {
  throw Error(fmt::format("{}: {}", path.string(), message));
}

// A real index lists every tensor once in a few dozen bytes: under 10 MB for the largest models.
// The safetensors header cap (100 MB) is far above that and still bounds what a hostile file costs.
constexpr std::uint64_t kMaxIndexBytes = kMaxSafetensorsHeaderBytes;
// {"metadata": {...}, "weight_map": {"t": "f"}} nests two levels; "metadata" may hold a little more
// (transformers and others add entries), but not the thousands of levels of a hostile "[[[[...".
constexpr int kMaxIndexDepth = 8;

// What a model folder may hold, in diffusers' names first (SAFE_WEIGHTS_NAME and its index), then
// transformers' names, which diffusers transformer folders also use.
constexpr std::string_view kFolderCandidates[] = {
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors", "model.safetensors.index.json"};

std::string read_index_text(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, fmt::format("cannot open for reading: {}", std::strerror(errno)));
  std::string text;
  try {
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail(path, fmt::format("cannot stat: {}", std::strerror(errno)));
    if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size > kMaxIndexBytes)
      fail(path, fmt::format("index of {} bytes exceeds the {}-byte limit", size, kMaxIndexBytes));
    text.resize(static_cast<std::size_t>(size));
    std::size_t done = 0;
    while (done < text.size()) {
      const ssize_t got = ::read(fd, text.data() + done, text.size() - done);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail(path, fmt::format("read error: {}", std::strerror(errno)));
      if (got == 0) fail(path, "file ended early (truncated while open?)");
      done += static_cast<std::size_t>(got);
    }
  } catch (...) {
    (void)::close(fd);
    throw;
  }
  (void)::close(fd);
  return text;
}

json parse_index_json(std::string_view text, const fs::path& path) {
  return parse_strict_json(text, kMaxIndexDepth, "index", [&](const std::string& m) { fail(path, m); });
}

// A shard must sit beside its index: a name with a separator or a dot-dot could reach any file.
bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find_first_of(std::string_view("/\\\0", 3)) == name.npos;
}

fs::path find_in_folder(const fs::path& folder) {
  std::vector<fs::path> found;
  for (const std::string_view name : kFolderCandidates) {
    std::error_code ec;
    const fs::path candidate = folder / name;
    if (fs::exists(candidate, ec)) found.push_back(candidate);
  }
  if (found.size() == 1) return found.front();
  if (found.empty()) {
    std::string hint;
    std::error_code ec;
    if (fs::is_directory(folder / "transformer", ec)) hint = " (a diffusers pipeline? its weights are in transformer/)";
    fail(folder, fmt::format("no model weights here{}: expected one of diffusion_pytorch_model.safetensors, "
                             "diffusion_pytorch_model.safetensors.index.json, model.safetensors, "
                             "model.safetensors.index.json",
                             hint));
  }
  std::string names;
  for (const fs::path& p : found) names += (names.empty() ? "" : ", ") + p.filename().string();
  fail(folder, fmt::format("holds more than one checkpoint ({}): name the file to read", names));
}

struct Loaded {
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  std::vector<TensorInfo> tensors;  // sorted by name
  std::vector<std::size_t> shard_of;
  std::map<std::string, std::string> metadata;
};

Loaded load_file(const fs::path& file) {
  Loaded loaded;
  loaded.shards.push_back(std::make_unique<SafetensorsFile>(file));
  loaded.tensors = loaded.shards[0]->tensors();
  loaded.shard_of.assign(loaded.tensors.size(), 0);
  loaded.metadata = loaded.shards[0]->metadata();
  return loaded;
}

Loaded load_index(const fs::path& index) {
  const json root = parse_index_json(read_index_text(index), index);
  if (!root.is_object()) fail(index, fmt::format("index is a JSON {}, expected an object", root.type_name()));
  const auto weight_map = root.find("weight_map");
  if (weight_map == root.end()) fail(index, "index has no \"weight_map\" (expected {\"weight_map\": {tensor: file}})");
  if (!weight_map->is_object())
    fail(index, fmt::format("weight_map is a JSON {}, expected an object of tensor: file", weight_map->type_name()));
  if (weight_map->empty()) fail(index, "weight_map lists no tensors");

  std::map<std::string, std::string> listed;  // tensor -> shard file name
  std::map<std::string, std::string> first_tensor_of;  // shard file name -> a tensor naming it, for messages
  for (const auto& [tensor, file] : weight_map->items()) {
    if (!file.is_string())
      fail(index, fmt::format("weight_map maps tensor '{}' to a JSON {}, expected a file name", tensor, file.type_name()));
    const std::string& name = file.get_ref<const std::string&>();
    if (!is_plain_file_name(name))
      fail(index, fmt::format("weight_map puts tensor '{}' in \"{}\": expected a plain file name in the index's "
                              "folder (no '/', no '..')",
                              tensor, name));
    listed.emplace(tensor, name);
    first_tensor_of.emplace(name, tensor);
  }

  Loaded loaded;
  std::vector<std::string> names;  // parallel to loaded.shards, sorted
  const fs::path folder = index.parent_path();
  for (const auto& [name, tensor] : first_tensor_of) {
    const fs::path file = folder / name;
    std::error_code ec;
    if (!fs::exists(file, ec))
      fail(index, fmt::format("weight_map puts tensor '{}' in shard \"{}\", which does not exist ({})", tensor, name,
                              file.string()));
    try {
      loaded.shards.push_back(std::make_unique<SafetensorsFile>(file));
    } catch (const Error& e) {
      fail(index, fmt::format("shard \"{}\" is not a valid safetensors file: {}", name, e.what()));
    }
    names.push_back(name);
  }

  // Where each tensor really is, then whether that is where the index says.
  std::map<std::string_view, std::size_t> found;  // views into the shards' own TensorInfo names
  for (std::size_t s = 0; s < loaded.shards.size(); ++s)
    for (const TensorInfo& t : loaded.shards[s]->tensors()) {
      const auto [it, inserted] = found.emplace(t.name, s);
      if (!inserted)
        fail(index, fmt::format("tensor '{}' is in two shards, \"{}\" and \"{}\"", t.name, names[it->second], names[s]));
    }
  for (const auto& [tensor, s] : found) {
    const auto entry = listed.find(std::string(tensor));
    if (entry == listed.end())
      fail(index, fmt::format("shard \"{}\" holds tensor '{}', which weight_map does not list", names[s], tensor));
    if (entry->second != names[s])
      fail(index, fmt::format("weight_map puts tensor '{}' in shard \"{}\", but shard \"{}\" holds it", tensor,
                              entry->second, names[s]));
  }
  for (const auto& [tensor, name] : listed)
    if (!found.contains(tensor))
      fail(index, fmt::format("weight_map puts tensor '{}' in shard \"{}\", which does not hold it", tensor, name));

  for (const auto& [tensor, s] : found) {
    loaded.tensors.push_back(loaded.shards[s]->info(tensor));
    loaded.shard_of.push_back(s);
  }

  loaded.metadata = loaded.shards[0]->metadata();
  if (const auto meta = root.find("metadata"); meta != root.end()) {
    if (!meta->is_object()) fail(index, fmt::format("\"metadata\" is a JSON {}, expected an object", meta->type_name()));
    for (const auto& [key, value] : meta->items())
      if (key != "total_size") loaded.metadata.emplace(key, value.is_string() ? value.get<std::string>() : value.dump());
  }
  return loaded;
}

std::size_t find_tensor(const std::vector<TensorInfo>& tensors, std::string_view name, const fs::path& path) {
  const auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                                   [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors.end() || it->name != name) fail(path, fmt::format("no tensor named '{}'", name));
  return static_cast<std::size_t>(it - tensors.begin());
}

}  // namespace

// ---------------------------------------------------------------- reader

Checkpoint::Checkpoint(const fs::path& path) : path_(path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) fail(path, fmt::format("cannot stat: {}", ec.message()));
  if (!fs::exists(status))
    fail(path, "no such file or folder (expected a .safetensors file, an .index.json file or a model folder)");
  const fs::path target = fs::is_directory(status) ? find_in_folder(path) : path;
  Loaded loaded = target.filename().string().ends_with(".json") ? load_index(target) : load_file(target);
  shards_ = std::move(loaded.shards);
  tensors_ = std::move(loaded.tensors);
  shard_of_ = std::move(loaded.shard_of);
  metadata_ = std::move(loaded.metadata);
  for (const auto& shard : shards_) files_.push_back(shard->path());
  if (target.filename().string().ends_with(".json")) files_.push_back(target);
}

Checkpoint::~Checkpoint() = default;

const TensorInfo& Checkpoint::info(std::string_view name) const { return tensors_[find_tensor(tensors_, name, path_)]; }

std::span<const std::byte> Checkpoint::bytes(std::string_view name) const {
  const std::size_t i = find_tensor(tensors_, name, path_);
  return shards_[shard_of_[i]]->bytes(tensors_[i]);
}

void Checkpoint::release(std::string_view name) const {
  const std::size_t i = find_tensor(tensors_, name, path_);
  const SafetensorsFile& shard = *shards_[shard_of_[i]];
  shard.release(shard.bytes(tensors_[i]));
}

const fs::path& Checkpoint::file_of(std::string_view name) const {
  return shards_[shard_of_[find_tensor(tensors_, name, path_)]]->path();
}

std::uint64_t Checkpoint::total_bytes() const {
  std::uint64_t total = 0;  // cannot overflow: each shard's tensors lie inside one mapped file
  for (const TensorInfo& t : tensors_) total += t.size;
  return total;
}

void refuse_output_over_input(const Checkpoint& input, const fs::path& output, std::string_view what) {
  const bool file_output = output.filename().string().ends_with(".safetensors");  // CheckpointWriter's rule
  for (const fs::path& f : input.files()) {
    if (same_file(output, f))
      throw Error(fmt::format("{}: {}: this is the input {}, which writing the output there would replace; "
                              "choose another path", output.string(), what, f.string()));
    const fs::path folder = f.has_parent_path() ? f.parent_path() : fs::path(".");
    if (!file_output && same_file(output, folder))
      throw Error(fmt::format("{}: {}: this folder holds the input {}, which writing the output there would replace "
                              "or remove; choose another folder", output.string(), what, f.string()));
  }
}

// ---------------------------------------------------------------- writer

namespace {

// "<base>.safetensors", "<base>.safetensors.index.json" or "<base>-NNNNN-of-NNNNN.safetensors": the
// files a save of this base name may have left, which finish() replaces. Nothing else is touched.
bool is_checkpoint_file(std::string_view name, std::string_view base) {
  if (!name.starts_with(base)) return false;
  std::string_view rest = name.substr(base.size());
  if (rest == ".safetensors" || rest == ".safetensors.index.json") return true;
  if (!rest.starts_with('-') || !rest.ends_with(".safetensors")) return false;
  rest = rest.substr(1, rest.size() - 1 - std::string_view(".safetensors").size());
  const auto digits = [&rest] {
    std::size_t n = 0;
    while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') ++n;
    rest.remove_prefix(n);
    return n;
  };
  if (digits() < 5 || !rest.starts_with("-of-")) return false;
  rest.remove_prefix(4);
  return digits() >= 5 && rest.empty();
}

// Makes renames durable (see atomic_file.cpp); best effort, as there.
void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  (void)::close(fd);
}

}  // namespace

struct CheckpointWriter::Impl {
  struct Shard {
    std::string file_name;          // final name, in `folder`
    std::vector<TensorSpec> specs;  // in SafetensorsWriter order
    fs::path staged;                // a folder's shard is finished under this name, renamed by finish()
    bool renamed = false;
  };

  fs::path path;
  fs::path folder;
  bool single_file = false;
  bool created_folder = false;
  bool finished = false;
  CheckpointLayout layout;
  std::map<std::string, std::string> metadata;
  std::vector<Shard> shards;
  std::string index_text;  // the index, built up front so that bad tensor names fail at once
  std::size_t next = 0;      // position in order()
  std::size_t shard = 0;     // the shard being written
  std::size_t in_shard = 0;  // tensors of it written
  std::unique_ptr<SafetensorsWriter> writer;

  ~Impl() {
    writer.reset();  // removes its own temporary file unless finished
    if (finished) return;
    for (const Shard& s : shards)
      if (!s.staged.empty() && !s.renamed) (void)::unlink(s.staged.c_str());
    std::error_code ec;
    if (created_folder) fs::remove(folder, ec);  // only if still empty; nothing to report from here
  }

  std::string index_name() const { return layout.base_name + ".safetensors.index.json"; }

  void open_shard(std::size_t i) {
    Shard& s = shards[i];
    fs::path target = path;
    if (!single_file) {
      s.staged = folder / fmt::format("{}.partial-{}", s.file_name, ::getpid());
      target = s.staged;
    }
    writer = std::make_unique<SafetensorsWriter>(target, s.specs, metadata);
    // order() promised this order before any writer existed; a mismatch is a bug here, said at once.
    const auto& got = writer->specs();
    if (!std::equal(got.begin(), got.end(), s.specs.begin(), s.specs.end(),
                    [](const TensorSpec& a, const TensorSpec& b) { return a.name == b.name; }))
      fail(path, "internal error: the shard writer's tensor order differs from order()");
  }

  void close_shard() {
    writer->finish();
    writer.reset();
  }

  void remove_stale() {
    std::set<std::string> keep;
    for (const Shard& s : shards) keep.insert(s.file_name);
    if (shards.size() > 1) keep.insert(index_name());
    std::vector<fs::path> stale;
    std::error_code ec;
    for (const fs::directory_entry& entry : fs::directory_iterator(folder, ec)) {
      const std::string name = entry.path().filename().string();
      if (keep.contains(name) || !is_checkpoint_file(name, layout.base_name)) continue;
      const fs::file_type type = entry.symlink_status(ec).type();
      if (type == fs::file_type::regular || type == fs::file_type::symlink) stale.push_back(entry.path());
    }
    if (ec) fail(folder, fmt::format("cannot list the folder to remove an older checkpoint: {}", ec.message()));
    // An old index first: until it is gone it would name shards that are about to disappear.
    std::stable_partition(stale.begin(), stale.end(),
                          [](const fs::path& p) { return p.filename().string().ends_with(".index.json"); });
    for (const fs::path& p : stale)
      if (::unlink(p.c_str()) != 0 && errno != ENOENT)
        fail(p, fmt::format("the new checkpoint is written, but this file of an older one cannot be removed: {}",
                            std::strerror(errno)));
  }
};

CheckpointWriter::CheckpointWriter(fs::path path, std::vector<TensorSpec> tensors,
                                   std::map<std::string, std::string> metadata, CheckpointLayout layout)
    : impl_(std::make_unique<Impl>()) {
  Impl& w = *impl_;
  w.path = std::move(path);
  w.metadata = std::move(metadata);
  w.layout = std::move(layout);
  w.single_file = w.path.extension() == ".safetensors";
  if (w.layout.max_shard_bytes == 0) fail(w.path, "max_shard_bytes must be positive");
  if (!w.single_file && !is_plain_file_name(w.layout.base_name))
    fail(w.path, fmt::format("base name \"{}\" must be a plain file name (no '/')", w.layout.base_name));

  std::sort(tensors.begin(), tensors.end(), [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
  std::vector<std::uint64_t> sizes;
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& spec = tensors[i];
    // Checked here, not when a later shard opens, so that nothing is written for a bad list.
    if (i > 0 && spec.name == tensors[i - 1].name) fail(w.path, fmt::format("two tensors are named '{}'", spec.name));
    if (spec.name == "__metadata__") fail(w.path, "a tensor cannot be named \"__metadata__\" (the metadata key)");
    const std::string what = fmt::format("{}: tensor '{}'", w.path.string(), spec.name);
    sizes.push_back(byte_size(spec.dtype, element_count(spec.shape, what), what));
    if (sizes.back() > std::numeric_limits<std::uint64_t>::max() - total)
      fail(w.path, "the tensors' total size overflows 64 bits");
    total += sizes.back();
  }

  // Packing in name order; a file output is one shard whatever its size.
  std::vector<std::vector<TensorSpec>> groups(1);
  std::uint64_t filled = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const std::uint64_t limit = w.layout.max_shard_bytes;
    const bool full = sizes[i] > limit || sizes[i] > limit - filled;
    if (!w.single_file && full && !groups.back().empty()) {
      groups.emplace_back();
      filled = 0;
    }
    groups.back().push_back(std::move(tensors[i]));
    filled += sizes[i];
    if (!w.single_file && sizes[i] > limit) {  // oversized: alone in its shard
      groups.emplace_back();
      filled = 0;
    }
  }
  if (groups.size() > 1 && groups.back().empty()) groups.pop_back();

  json weight_map = json::object();
  for (std::size_t i = 0; i < groups.size(); ++i) {
    Impl::Shard s;
    s.file_name = w.single_file ? w.path.filename().string()
                  : groups.size() == 1
                      ? w.layout.base_name + ".safetensors"
                      : fmt::format("{}-{:05d}-of-{:05d}.safetensors", w.layout.base_name, i + 1, groups.size());
    // SafetensorsWriter's documented order: DType descending, then name.
    s.specs = std::move(groups[i]);
    std::sort(s.specs.begin(), s.specs.end(), [](const TensorSpec& a, const TensorSpec& b) {
      return a.dtype != b.dtype ? a.dtype > b.dtype : a.name < b.name;
    });
    for (const TensorSpec& spec : s.specs) {
      order_.push_back(spec);
      weight_map[spec.name] = s.file_name;
    }
    w.shards.push_back(std::move(s));
  }
  json index = json::object();
  index["metadata"] = json::object({{"total_size", total}});
  index["weight_map"] = std::move(weight_map);
  try {
    w.index_text = index.dump(2, ' ', true) + "\n";  // diffusers: json.dumps(index, indent=2, sort_keys=True) + "\n"
  } catch (const json::exception& e) {
    fail(w.path, fmt::format("tensor names must be valid UTF-8: {}", e.what()));
  }

  std::error_code ec;
  if (w.single_file) {
    if (fs::is_directory(w.path, ec))
      fail(w.path, "is a folder: name a .safetensors file, or a folder without the .safetensors extension");
    w.folder = w.path.parent_path();
  } else {
    w.folder = w.path;
    if (fs::exists(w.path, ec) && !fs::is_directory(w.path, ec))
      fail(w.path, "exists and is not a folder (name a .safetensors file to write a single file)");
    w.created_folder = fs::create_directories(w.path, ec);
    if (ec) fail(w.path, fmt::format("cannot create the folder: {}", ec.message()));
  }
  w.open_shard(0);
}

CheckpointWriter::~CheckpointWriter() = default;  // Impl::~Impl removes what an unfinished writer wrote

void CheckpointWriter::write(std::string_view name, std::span<const std::byte> bytes) {
  Impl& w = *impl_;
  if (w.finished) fail(w.path, fmt::format("write('{}') after finish()", name));
  if (w.next >= order_.size())
    fail(w.path, fmt::format("write('{}'): all {} tensors are already written", name, order_.size()));
  if (name != order_[w.next].name)
    fail(w.path, fmt::format("write('{}'): expected tensor '{}' next (tensors are written in order())", name,
                             order_[w.next].name));
  if (w.writer == nullptr) w.open_shard(w.shard);
  w.writer->write(name, bytes);
  ++w.next;
  if (!w.single_file && ++w.in_shard == w.shards[w.shard].specs.size()) {
    w.close_shard();
    ++w.shard;
    w.in_shard = 0;
  }
}

void CheckpointWriter::finish() {
  Impl& w = *impl_;
  if (w.finished) fail(w.path, "finish() called twice");
  if (w.next != order_.size())
    fail(w.path, fmt::format("finish(): {} of {} tensors written; '{}' is next", w.next, order_.size(),
                             order_[w.next].name));
  if (w.single_file) {
    w.writer->finish();
    w.writer.reset();
    w.finished = true;
    return;
  }
  if (w.writer != nullptr) w.close_shard();  // a checkpoint without tensors: its one shard is still open

  // Final names, shards first and the index last, so that a crash in between leaves either the old
  // index or none; if a rename fails, the shards already renamed stay and the rest are removed.
  for (Impl::Shard& s : w.shards) {
    const fs::path target = w.folder / s.file_name;
    if (::rename(s.staged.c_str(), target.c_str()) != 0)
      fail(target, fmt::format("cannot rename {} onto it: {}", s.staged.string(), std::strerror(errno)));
    s.renamed = true;
  }
  if (w.shards.size() > 1) {
    AtomicFile index(w.folder / w.index_name());  // commit() syncs the folder, renames included
    index.write(std::as_bytes(std::span(w.index_text)));
    index.commit();
  } else {
    sync_directory(w.folder);
  }
  w.finished = true;
  w.remove_stale();
}

std::vector<fs::path> CheckpointWriter::files() const {
  std::vector<fs::path> names;
  for (const Impl::Shard& s : impl_->shards) names.emplace_back(s.file_name);
  if (!impl_->single_file && impl_->shards.size() > 1) names.emplace_back(impl_->index_name());
  return names;
}

}  // namespace loraq::io
