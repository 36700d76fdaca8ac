// Tensor files: .npy arrays and safetensors checkpoints, read defensively and written atomically.
//
// Readers never trust a file: header sizes are capped, JSON is validated, every byte range is
// checked to be exactly dtype size x element count and inside the file, with overflow-safe
// arithmetic; every failure throws loraq::Error naming the file (and tensor) and what was expected.
// Writers write to "<path>.tmp-<pid>" and rename on success, so a finished-looking file is never
// half written; an exception or a destroyed, unfinished writer removes the temporary file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace loraq::io {

// Every dtype of the safetensors format (names as in its header: "F32", "BF16", ...), listed in the
// order of the reference implementation's `Dtype` enum (safetensors 0.8): its writer lays tensors out
// by this order, descending, then by name, which puts 8-byte types first so every tensor is aligned
// to its element size. SafetensorsWriter does the same, so both write the same bytes.
enum class DType : std::uint8_t {
  boolean,      // BOOL, one byte
  f4,           // F4 (e2m1), 4 bits: two elements per byte
  f6_e2m3,      // F6_E2M3, 6 bits: four elements per three bytes
  f6_e3m2,      // F6_E3M2, 6 bits
  u8, i8,
  f8_e5m2, f8_e4m3, f8_e8m0, f8_e4m3fnuz, f8_e5m2fnuz,
  i16, u16, f16, bf16,
  i32, u32, f32,
  c64,          // complex64: two float32
  f64, i64, u64,
};
inline constexpr int kDTypeCount = 22;

std::string_view dtype_name(DType d);           // "F32"
std::size_t dtype_bits(DType d);                // bits per element: 4 for F4, 6 for F6_*, 8 x bytes else
std::size_t dtype_size(DType d);                // bytes per element; throws Error for F4 and F6_*
DType parse_dtype(std::string_view safetensors_name);  // throws Error naming the unknown dtype
bool is_float_dtype(DType d);                   // f16, bf16, f32, f64 (converted by to/from_float32)

// Exact widening to float32 (f64 is rounded to nearest, finite values beyond the float range
// saturate to +-FLT_MAX as in the element codecs). Throws Error for other dtypes or a size mismatch.
void to_float32(DType d, std::span<const std::byte> bytes, std::span<float> out);
// Narrowing with round-to-nearest-even; values beyond the target's range saturate to +-max.
void from_float32(DType d, std::span<const float> in, std::span<std::byte> out);

// Throws Error "FILE: tensor 'NAME' holds NaN at [3, 5]: loraq refuses non-finite weights" for the
// first NaN or Inf of a tensor's float32 values (one vectorized pass when there is none). An empty
// `tensor` leaves out "tensor 'NAME' " (a file of one array); `what` is the noun at the end.
void require_finite(std::span<const float> values, std::span<const std::int64_t> shape, std::string_view file,
                    std::string_view tensor, std::string_view what = "weights");

// Checked element count of a shape: throws Error on negative dims or a count above 2^62.
// `what` names the file and tensor for the message.
std::uint64_t element_count(std::span<const std::int64_t> shape, std::string_view what);
// Checked byte size of `count` elements: throws Error when the sub-byte dtypes (F4, F6_*) do not fill
// whole bytes, as the reference implementation does.
std::uint64_t byte_size(DType d, std::uint64_t count, std::string_view what);

// ---------------------------------------------------------------- .npy
struct NpyArray {
  DType dtype;                      // F32, F16 or BF16 ('<V2' arrays, as ml_dtypes saves bfloat16)
  std::vector<std::int64_t> shape;  // C order
  std::vector<std::byte> data;
};
// Reads version 1.0/2.0/3.0 files of little-endian float32, float16 or bfloat16, C order.
NpyArray read_npy(const std::filesystem::path& path);
// The same checks on a whole .npy file given as bytes (read_npy shares the header parser); errors
// name `what`. The fuzz target tests/fuzz/fuzz_npy_header.cpp drives it.
NpyArray parse_npy(std::span<const std::byte> file_bytes, std::string_view what);
void write_npy(const std::filesystem::path& path, const NpyArray& array);  // atomic

// Whether a and b are one existing file or folder (through hard and symbolic links): how the commands
// refuse an output that would replace their input.
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b);

// ---------------------------------------------------------------- safetensors
struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t offset;  // from the start of the data section
  std::uint64_t size;    // bytes
};

// The header of a safetensors file, validated: what SafetensorsFile holds besides the mapping.
struct ParsedHeader {
  std::uint64_t data_start = 0;       // 8 + header length: where the data section begins
  std::vector<TensorInfo> tensors;    // sorted by name; byte ranges checked against the data section
  std::map<std::string, std::string> metadata;
};
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;  // the reference's MAX_HEADER_SIZE

// Parses and checks the header of a safetensors file given as bytes: `head` starts at the 8-byte
// length prefix and holds at least the whole header (the whole file will do); `file_size` is the size
// of the whole file, which bounds every tensor's byte range. This is the one parser SafetensorsFile
// uses, so every check it applies is here (and the fuzz target tests/fuzz/fuzz_safetensors_header.cpp
// drives it). Throws Error naming `what` (and the tensor).
ParsedHeader parse_safetensors_header(std::span<const std::byte> head, std::uint64_t file_size,
                                      std::string_view what);

// A memory-mapped safetensors file. Tensors are described by where they live, not copied.
class SafetensorsFile {
 public:
  static constexpr std::uint64_t kMaxHeaderBytes = kMaxSafetensorsHeaderBytes;

  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by name
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo& info(std::string_view name) const;  // throws Error naming file and tensor
  std::span<const std::byte> bytes(const TensorInfo& tensor) const;
  // Unmaps the pages behind `bytes` (a span of this file, done with) from the process: they stay in
  // the page cache, but no longer count in its resident memory. The range grows to 2 MiB boundaries
  // within this file's mapping, because the kernel maps whole large folios (up to 2 MiB) on a fault,
  // far beyond a small tensor; doing so is harmless for a read-only file mapping.
  void release(std::span<const std::byte> bytes) const;

 private:
  std::filesystem::path path_;
  const std::byte* map_ = nullptr;
  std::size_t map_size_ = 0;
  std::uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
};

// Streams a safetensors file: the header first, then each tensor's bytes in specs() order, which is
// the reference writer's order (DType descending, then name): for the same tensors and at most one
// metadata key the output is byte-identical to safetensors' save_file (which orders metadata keys
// randomly; ours are sorted). Empty metadata writes no "__metadata__" key.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::filesystem::path path, std::vector<TensorSpec> tensors,
                    std::map<std::string, std::string> metadata = {});
  ~SafetensorsWriter();  // removes the temporary file unless finish() succeeded
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Tensors in specs() order, zero-size ones included; the byte count must match the spec.
  void write(std::string_view name, std::span<const std::byte> bytes);
  const std::vector<TensorSpec>& specs() const { return specs_; }  // DType descending, then name
  void finish();  // flushes, fsyncs and renames the temporary file onto the path

 private:
  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  std::vector<TensorSpec> specs_;
  std::size_t next_ = 0;
  std::unique_ptr<struct AtomicFile> file_;
};

// A file written under a temporary name and renamed onto its path by commit(). Used by every writer.
struct AtomicFile {
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();  // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(std::span<const std::byte> bytes);  // throws Error naming the file (disk full, ...)
  void commit();
  std::filesystem::path path;
  std::filesystem::path temp_path;
  int fd = -1;
  bool committed = false;
};

}  // namespace loraq::io
