// safetensors checkpoints: a memory-mapped, fully validated reader and a streaming writer.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON, then the data section. The writer
// reproduces the reference implementation (huggingface/safetensors `serialize`) byte for byte:
// tensors laid out by DType descending then name (8-byte types first, so each tensor is aligned to
// its element size), JSON keys in that order after "__metadata__", compact JSON, and the header
// padded with spaces to a multiple of 8 bytes.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "loraq/error.hpp"
#include "loraq/io.hpp"
#include "strict_json.hpp"

namespace loraq::io {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::filesystem::path& path, std::string_view message) {
  throw Error(fmt::format("{}: {}", path.string(), message));
}

[[noreturn]] void fail_what(std::string_view what, std::string_view message) {
  throw Error(fmt::format("{}: {}", what, message));
}

// A header nests at most {"name": {"shape": [d, ...]}}: deeper JSON is hostile, and refusing it in
// the parse callback bounds the work before a 100 MB header of "[[[[..." is ever built.
constexpr int kMaxJsonDepth = 4;

json parse_header_json(std::string_view text, std::string_view what) {
  return parse_strict_json(text, kMaxJsonDepth, "header", [&](const std::string& m) { fail_what(what, m); });
}

std::string_view json_type(const json& value) { return value.type_name(); }

TensorInfo parse_tensor(const std::string& name, const json& entry, std::uint64_t data_size, std::string_view file) {
  const std::string what = fmt::format("{}: tensor '{}'", file, name);
  const auto bad = [&](std::string_view message) -> Error { return Error(fmt::format("{}: {}", what, message)); };
  if (!entry.is_object())
    throw bad(fmt::format("entry is a JSON {}, expected an object with dtype, shape and data_offsets",
                          json_type(entry)));
  for (const auto& [key, value] : entry.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw bad(fmt::format("unexpected key \"{}\" (expected exactly dtype, shape and data_offsets)", key));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) throw bad(fmt::format("missing \"{}\"", key));

  TensorInfo info;
  info.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) throw bad(fmt::format("dtype is a JSON {}, expected a string such as \"F32\"", json_type(dtype)));
  try {
    info.dtype = parse_dtype(dtype.get_ref<const std::string&>());
  } catch (const Error& e) {
    throw bad(e.what());
  }

  const json& shape = entry["shape"];
  if (!shape.is_array()) throw bad(fmt::format("shape is a JSON {}, expected an array of integers", json_type(shape)));
  for (const json& dim : shape) {
    if (!dim.is_number_integer())
      throw bad(fmt::format("shape holds a JSON {} ({}), expected non-negative integers", json_type(dim), dim.dump()));
    if (dim.is_number_unsigned() && dim.get<std::uint64_t>() > std::uint64_t{std::numeric_limits<std::int64_t>::max()})
      throw bad(fmt::format("shape dimension {} does not fit in 64 bits", dim.dump()));
    info.shape.push_back(dim.get<std::int64_t>());
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    throw bad(fmt::format("data_offsets is {}, expected [begin, end] with non-negative integers", offsets.dump()));
  const auto begin = offsets[0].get<std::uint64_t>();
  const auto end = offsets[1].get<std::uint64_t>();
  if (begin > end) throw bad(fmt::format("data_offsets [{}, {}] end before they begin", begin, end));
  if (end > data_size)
    throw bad(fmt::format("data_offsets [{}, {}] reach past the data section of {} bytes", begin, end, data_size));
  const std::uint64_t size = byte_size(info.dtype, element_count(info.shape, what), what);
  if (end - begin != size)
    throw bad(fmt::format("data_offsets [{}, {}] span {} bytes, expected {} for {} shape {}", begin, end, end - begin,
                          size, dtype_name(info.dtype), shape.dump()));
  info.offset = begin;
  info.size = size;
  return info;
}

bool name_less(const std::string& a, const std::string& b) { return a < b; }  // bytewise, as Rust's String

}  // namespace

// ---------------------------------------------------------------- header

ParsedHeader parse_safetensors_header(std::span<const std::byte> head, std::uint64_t file_size,
                                      std::string_view what) {
  if (file_size < 8)
    fail_what(what, fmt::format("{} bytes is too short for a safetensors file (expected an 8-byte header length)",
                                file_size));
  if (head.size() > file_size)
    fail_what(what, fmt::format("given {} header bytes of a file of only {} bytes", head.size(), file_size));
  if (head.size() < 8) fail_what(what, fmt::format("given {} header bytes, fewer than the 8-byte length", head.size()));
  std::uint64_t header_length = 0;
  std::memcpy(&header_length, head.data(), 8);  // little-endian host, checked in dtype.cpp
  if (header_length > kMaxSafetensorsHeaderBytes)
    fail_what(what, fmt::format("header length {} exceeds the {}-byte limit of the format", header_length,
                                kMaxSafetensorsHeaderBytes));
  if (header_length > file_size - 8)
    fail_what(what, fmt::format("header length {} is larger than the {} bytes that follow it", header_length,
                                file_size - 8));
  if (header_length > head.size() - 8)
    fail_what(what, fmt::format("given {} of the header's {} bytes", head.size() - 8, header_length));
  const std::string_view text(reinterpret_cast<const char*>(head.data()) + 8, header_length);
  // The reference refuses headers that do not open with '{' (no leading whitespace or BOM).
  if (text.empty() || text.front() != '{') fail_what(what, "header is not a JSON object: expected it to start with '{'");
  const json header = parse_header_json(text, what);
  if (!header.is_object()) fail_what(what, fmt::format("header is a JSON {}, expected an object", json_type(header)));

  ParsedHeader parsed;
  parsed.data_start = 8 + header_length;
  const std::uint64_t data_size = file_size - parsed.data_start;
  for (const auto& [key, value] : header.items()) {
    if (key != "__metadata__") {
      parsed.tensors.push_back(parse_tensor(key, value, data_size, what));
      continue;
    }
    if (!value.is_object())
      fail_what(what, fmt::format("__metadata__ is a JSON {}, expected an object of strings", json_type(value)));
    for (const auto& [meta_key, meta_value] : value.items()) {
      if (!meta_value.is_string())
        fail_what(what, fmt::format("__metadata__ must map strings to strings; \"{}\" holds a JSON {}", meta_key,
                                    json_type(meta_value)));
      parsed.metadata.emplace(meta_key, meta_value.get<std::string>());
    }
  }

  // No two tensors may share a byte: sort the non-empty ones by offset and compare neighbours.
  // (Zero-size tensors occupy no bytes and may sit anywhere inside the data section.)
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : parsed.tensors)
    if (t.size > 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->size < b->size;
  });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    const TensorInfo& next = *by_offset[i];
    if (next.offset < prev.offset + prev.size)
      fail_what(what, fmt::format("tensors '{}' (bytes {}..{}) and '{}' (bytes {}..{}) overlap", prev.name,
                                  prev.offset, prev.offset + prev.size, next.name, next.offset,
                                  next.offset + next.size));
  }
  std::sort(parsed.tensors.begin(), parsed.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return name_less(a.name, b.name); });
  return parsed;
}

// ---------------------------------------------------------------- reader

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : path_(path) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path_, fmt::format("cannot open for reading: {}", std::strerror(errno)));
  struct stat st {};
  const int stat_result = ::fstat(fd, &st);
  const int stat_error = errno;
  if (stat_result != 0 || !S_ISREG(st.st_mode)) {
    (void)::close(fd);
    if (stat_result != 0) fail(path_, fmt::format("cannot stat: {}", std::strerror(stat_error)));
    fail(path_, "not a regular file");
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  // mmap refuses an empty file; parse_safetensors_header reports it (and every other size problem).
  if (file_size > 0) {
    void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_SHARED, fd, 0);
    const int map_error = errno;
    (void)::close(fd);  // the mapping keeps the file open
    if (map == MAP_FAILED) fail(path_, fmt::format("cannot mmap {} bytes: {}", file_size, std::strerror(map_error)));
    map_ = static_cast<const std::byte*>(map);
    map_size_ = file_size;
  } else {
    (void)::close(fd);
  }

  try {
    ParsedHeader parsed = parse_safetensors_header({map_, map_size_}, file_size, path_.string());
    data_start_ = parsed.data_start;
    tensors_ = std::move(parsed.tensors);
    metadata_ = std::move(parsed.metadata);
  } catch (...) {
    if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_size_);
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                                   [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) fail(path_, fmt::format("no tensor named '{}'", name));
  return *it;
}

void SafetensorsFile::release(std::span<const std::byte> bytes) const {
  if (!map_ || bytes.empty()) return;
  constexpr std::uintptr_t kFolio = std::uintptr_t(2) << 20;
  static const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto map_begin = reinterpret_cast<std::uintptr_t>(map_), map_end = map_begin + map_size_;
  const auto begin = reinterpret_cast<std::uintptr_t>(bytes.data()), end = begin + bytes.size();
  if (begin < map_begin || end > map_end) return;  // not this file's: nothing to do
  const std::uintptr_t first = std::max(begin / kFolio * kFolio, map_begin);  // map_ is page-aligned
  const std::uintptr_t last = std::min((end + kFolio - 1) / kFolio * kFolio, (map_end + page - 1) / page * page);
  madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& tensor) const {
  // A TensorInfo from another file (or edited by hand) must not read outside this mapping.
  const std::uint64_t data_size = map_size_ - data_start_;
  if (tensor.offset > data_size || tensor.size > data_size - tensor.offset)
    fail(path_, fmt::format("tensor '{}' (bytes {}, size {}) is outside this file's data section", tensor.name,
                            tensor.offset, tensor.size));
  return {map_ + data_start_ + tensor.offset, static_cast<std::size_t>(tensor.size)};
}

// ---------------------------------------------------------------- writer

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path, std::vector<TensorSpec> tensors,
                                     std::map<std::string, std::string> metadata)
    : path_(std::move(path)), specs_(std::move(tensors)) {
  std::set<std::string_view> names;
  for (const TensorSpec& spec : specs_) {
    if (spec.name == "__metadata__") fail(path_, "a tensor cannot be named \"__metadata__\" (the metadata key)");
    if (!names.insert(spec.name).second) fail(path_, fmt::format("two tensors are named '{}'", spec.name));
  }
  // The reference's layout order: DType descending (its enum order, which ours copies), then name.
  std::sort(specs_.begin(), specs_.end(), [](const TensorSpec& a, const TensorSpec& b) {
    return a.dtype != b.dtype ? a.dtype > b.dtype : name_less(a.name, b.name);
  });

  // ordered_json keeps insertion order: "__metadata__" first, then the tensors in layout order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;  // sorted: the reference's are random
    header["__metadata__"] = std::move(meta);
  }
  std::uint64_t offset = 0;
  for (const TensorSpec& spec : specs_) {
    const std::string what = fmt::format("{}: tensor '{}'", path_.string(), spec.name);
    const std::uint64_t size = byte_size(spec.dtype, element_count(spec.shape, what), what);
    if (size > std::numeric_limits<std::uint64_t>::max() - offset)
      fail(path_, "the tensors' total size overflows 64 bits");
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(spec.dtype);
    entry["shape"] = spec.shape;
    entry["data_offsets"] = {offset, offset + size};
    header[spec.name] = std::move(entry);
    offset += size;
  }
  std::string text;
  try {
    text = header.dump();  // compact, UTF-8 kept as is: the reference's serde_json output
  } catch (const nlohmann::json::exception& e) {
    fail(path_, fmt::format("tensor names and metadata must be valid UTF-8: {}", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the reference pads to a multiple of 8 with spaces
  if (text.size() > SafetensorsFile::kMaxHeaderBytes)
    fail(path_, fmt::format("header of {} bytes exceeds the format's {}-byte limit", text.size(),
                            SafetensorsFile::kMaxHeaderBytes));

  file_ = std::make_unique<AtomicFile>(path_);
  temp_path_ = file_->temp_path;
  std::uint64_t length = text.size();
  std::byte prefix[8];
  std::memcpy(prefix, &length, 8);
  file_->write(prefix);
  file_->write(std::as_bytes(std::span(text)));
}

SafetensorsWriter::~SafetensorsWriter() = default;  // ~AtomicFile removes an unfinished temporary file

void SafetensorsWriter::write(std::string_view name, std::span<const std::byte> bytes) {
  if (file_ == nullptr || file_->committed) fail(path_, fmt::format("write('{}') after finish()", name));
  if (next_ >= specs_.size())
    fail(path_, fmt::format("write('{}'): all {} tensors are already written", name, specs_.size()));
  const TensorSpec& spec = specs_[next_];
  if (name != spec.name)
    fail(path_, fmt::format("write('{}'): expected tensor '{}' next (tensors are written in specs() order: dtype "
                            "descending, then name)",
                            name, spec.name));
  const std::string what = fmt::format("{}: tensor '{}'", path_.string(), spec.name);
  const std::uint64_t size = byte_size(spec.dtype, element_count(spec.shape, what), what);
  if (bytes.size() != size)
    fail(path_, fmt::format("write('{}'): got {} bytes, expected {} for {} shape [{}]", name, bytes.size(), size,
                            dtype_name(spec.dtype), fmt::join(spec.shape, ", ")));
  file_->write(bytes);
  ++next_;
}

void SafetensorsWriter::finish() {
  if (file_ == nullptr || file_->committed) fail(path_, "finish() called twice");
  if (next_ != specs_.size())
    fail(path_, fmt::format("finish(): {} of {} tensors written; '{}' is next", next_, specs_.size(),
                            specs_[next_].name));
  file_->commit();
}

}  // namespace loraq::io
