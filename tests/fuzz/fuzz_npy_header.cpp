// libFuzzer target: arbitrary bytes as a whole .npy file.
//
// parse_npy (the bytes in memory) and read_npy (the same bytes as a file: a prefix read, then the
// header, then the data straight into the array) share the header parser but not the reading code,
// so they must agree: both throw loraq::Error, or both return the same array. A returned array must
// keep io.hpp's promises: F32, F16 or BF16, at most 64 dimensions, and exactly element count x
// dtype size bytes, which are the file's last bytes. Anything else (crash, sanitizer report, another
// exception, a broken promise) is a finding (abort).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>

#include "loraq/error.hpp"
#include "loraq/io.hpp"

namespace {

using loraq::io::DType;
using loraq::io::NpyArray;

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_npy_header: %s\n", what);
  std::abort();
}

// read_npy's file: an anonymous in-memory file rewritten for each input, opened by its /proc path.
struct MemoryFile {
  int fd = ::memfd_create("fuzz.npy", MFD_CLOEXEC);
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  void fill(std::span<const std::byte> bytes) const {
    require(fd >= 0 && ::ftruncate(fd, 0) == 0, "memfd_create/ftruncate failed");
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
      require(n > 0, "pwrite to the memfd failed");
      done += static_cast<std::size_t>(n);
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);

  std::optional<NpyArray> parsed;
  try {
    parsed = loraq::io::parse_npy(file, "fuzz");
  } catch (const loraq::Error&) {
  }

  static const MemoryFile memory;
  memory.fill(file);
  std::optional<NpyArray> read;
  try {
    read = loraq::io::read_npy(memory.path);
  } catch (const loraq::Error&) {
  }
  require(parsed.has_value() == read.has_value(), "read_npy and parse_npy disagree on accepting the file");
  if (!parsed) return 0;
  require(parsed->dtype == read->dtype && parsed->shape == read->shape && parsed->data == read->data,
          "read_npy and parse_npy return different arrays");

  require(parsed->dtype == DType::f32 || parsed->dtype == DType::f16 || parsed->dtype == DType::bf16,
          "an npy dtype other than F32, F16 or BF16");
  require(parsed->shape.size() <= 64, "more than 64 dimensions");
  const std::uint64_t count = loraq::io::element_count(parsed->shape, "fuzz");
  require(parsed->data.size() == loraq::io::byte_size(parsed->dtype, count, "fuzz"),
          "data is not element count x dtype size bytes");
  require(std::equal(parsed->data.begin(), parsed->data.end(), file.end() - std::ptrdiff_t(parsed->data.size())),
          "data is not the file's last bytes");
  return 0;
}
