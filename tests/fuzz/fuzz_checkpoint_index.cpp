// libFuzzer target: arbitrary bytes as the "model.safetensors.index.json" of a sharded checkpoint.
//
// The index is read from a file beside its shards (there is no in-memory entry point: the shard
// names it holds are looked up in its folder), so each input is written into a private temporary
// folder that also holds two fixed, valid shards:
//   a.safetensors: "x" F32 [2], "y" I8 [3]      b.safetensors: "z" BF16 [1, 2]
// (tests/fuzz/make_corpus.py writes the seed indexes that describe them). Opening must throw
// loraq::Error or give a checkpoint that keeps checkpoint.hpp's promises: tensors sorted and unique,
// each one read from the shard file_of names with the bytes and shape that shard holds. Anything else
// (crash, sanitizer report, another exception, a broken promise) is a finding (abort).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "loraq/io.hpp"

namespace {

namespace fs = std::filesystem;
using loraq::io::DType;

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_checkpoint_index: %s\n", what);
  std::abort();
}

void write_shard(const fs::path& path, const std::vector<loraq::io::TensorSpec>& specs) {
  loraq::io::SafetensorsWriter writer(path, specs);
  for (const loraq::io::TensorSpec& spec : writer.specs()) {
    const std::uint64_t count = loraq::io::element_count(spec.shape, spec.name);
    const std::uint64_t n = loraq::io::byte_size(spec.dtype, count, spec.name);
    std::vector<std::byte> bytes(n);
    for (std::size_t i = 0; i < n; ++i) bytes[i] = std::byte(spec.name[0] + i);  // each tensor's own bytes
    writer.write(spec.name, bytes);
  }
  writer.finish();
}

// The folder lives as long as the process (never destroyed, so the exit handler can still use it) and
// is removed at exit; a crash leaves it for inspection.
struct Folder {
  fs::path path;
  fs::path index;
  Folder() {
    std::string name = (fs::temp_directory_path() / "loraq-fuzz-index-XXXXXX").string();
    require(::mkdtemp(name.data()) != nullptr, "mkdtemp failed");
    path = name;
    index = path / "model.safetensors.index.json";
    write_shard(path / "a.safetensors", {{"x", DType::f32, {2}}, {"y", DType::i8, {3}}});
    write_shard(path / "b.safetensors", {{"z", DType::bf16, {1, 2}}});
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(folder().path, ec);
    });
  }
  static const Folder& folder() {
    static const Folder* const f = new Folder;
    return *f;
  }
  void write_index(std::span<const std::uint8_t> bytes) const {
    const int fd = ::open(index.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    require(fd >= 0, "cannot write the index file");
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      require(n > 0, "write of the index file failed");
      done += static_cast<std::size_t>(n);
    }
    ::close(fd);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Folder& folder = Folder::folder();
  folder.write_index({data, size});
  try {
    const loraq::io::Checkpoint checkpoint(folder.index);
    require(checkpoint.shard_count() >= 1 && checkpoint.shard_count() <= 2, "shard count is not 1 or 2");
    const auto& tensors = checkpoint.tensors();
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const loraq::io::TensorInfo& t = tensors[i];
      require(i == 0 || tensors[i - 1].name < t.name, "tensor names are not sorted and unique");
      // What the shard file itself says of this tensor, through a reader of its own.
      const loraq::io::SafetensorsFile shard(checkpoint.file_of(t.name));
      const loraq::io::TensorInfo& own = shard.info(t.name);
      require(own.dtype == t.dtype && own.shape == t.shape, "the checkpoint reports another dtype or shape");
      const auto got = checkpoint.bytes(t.name);
      const auto expected = shard.bytes(own);
      require(std::equal(got.begin(), got.end(), expected.begin(), expected.end()),
              "the checkpoint returns other bytes");
    }
  } catch (const loraq::Error&) {
  }
  return 0;
}
