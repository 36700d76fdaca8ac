// libFuzzer target: arbitrary bytes as a whole safetensors file.
//
// Three readers must agree on every input: parse_safetensors_header over the whole buffer, over only
// the 8 + N bytes a streaming reader would hold, and SafetensorsFile opening the same bytes as a
// file (the path `loraq` takes: open, fstat, mmap). Either all throw loraq::Error or all return the
// same tensors, and then every promise of io.hpp must hold: names sorted and unique, each byte range
// exactly dtype size x element count, inside the data section, and no two ranges sharing a byte.
// A crash, a sanitizer report, another exception or a broken promise is a finding (abort).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>

#include "loraq/error.hpp"
#include "loraq/io.hpp"

namespace {

using loraq::io::ParsedHeader;
using loraq::io::TensorInfo;

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz_safetensors_header: %s\n", what);
  std::abort();
}

void require(bool ok, const char* what) {
  if (!ok) finding(what);
}

bool same_tensors(const std::vector<TensorInfo>& a, const std::vector<TensorInfo>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const TensorInfo& x, const TensorInfo& y) {
    return x.name == y.name && x.dtype == y.dtype && x.shape == y.shape && x.offset == y.offset && x.size == y.size;
  });
}

void check_promises(const ParsedHeader& h, std::span<const std::byte> file) {
  std::uint64_t length = 0;
  std::memcpy(&length, file.data(), 8);
  require(h.data_start == 8 + length && h.data_start <= file.size(), "data_start is not 8 + the header length");
  const std::uint64_t data_size = file.size() - h.data_start;
  std::vector<const TensorInfo*> used;
  for (std::size_t i = 0; i < h.tensors.size(); ++i) {
    const TensorInfo& t = h.tensors[i];
    require(i == 0 || h.tensors[i - 1].name < t.name, "tensor names are not sorted and unique");
    require(t.name != "__metadata__", "the metadata key was taken for a tensor");
    const std::uint64_t count = loraq::io::element_count(t.shape, "fuzz");
    require(t.size == loraq::io::byte_size(t.dtype, count, "fuzz"), "size is not dtype size x element count");
    require(t.offset <= data_size && t.size <= data_size - t.offset, "byte range leaves the data section");
    if (t.size > 0) used.push_back(&t);
  }
  std::sort(used.begin(), used.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < used.size(); ++i)
    require(used[i - 1]->offset + used[i - 1]->size <= used[i]->offset, "two tensors share bytes");
}

// The file the SafetensorsFile reader opens: an anonymous in-memory file, rewritten for each input,
// opened by its /proc path so that the reader runs exactly as on a file on disk.
struct MemoryFile {
  int fd = ::memfd_create("fuzz.safetensors", MFD_CLOEXEC);
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

  std::optional<ParsedHeader> whole;
  try {
    whole = loraq::io::parse_safetensors_header(file, size, "fuzz");
  } catch (const loraq::Error&) {
  }

  // Only the header's bytes, as a reader that has not mapped the data yet would pass them.
  if (size >= 8) {
    std::uint64_t length = 0;
    std::memcpy(&length, data, 8);
    const std::size_t head = static_cast<std::size_t>(std::min<std::uint64_t>(size - 8, length)) + 8;
    std::optional<ParsedHeader> prefix;
    try {
      prefix = loraq::io::parse_safetensors_header(file.first(head), size, "fuzz");
    } catch (const loraq::Error&) {
    }
    require(whole.has_value() == prefix.has_value(), "header-only parse disagrees with whole-file parse");
    if (whole) require(same_tensors(whole->tensors, prefix->tensors) && whole->metadata == prefix->metadata,
                       "header-only parse returned other tensors");
  }

  static const MemoryFile memory;
  memory.fill(file);
  try {
    const loraq::io::SafetensorsFile opened(memory.path);
    require(whole.has_value(), "SafetensorsFile accepted a file the parser refuses");
    require(same_tensors(opened.tensors(), whole->tensors) && opened.metadata() == whole->metadata,
            "SafetensorsFile and the parser disagree");
    for (const TensorInfo& t : opened.tensors()) {
      const auto bytes = opened.bytes(opened.info(t.name));
      const auto expected = file.subspan(static_cast<std::size_t>(whole->data_start + t.offset), t.size);
      require(bytes.size() == expected.size() && std::equal(bytes.begin(), bytes.end(), expected.begin()),
              "SafetensorsFile::bytes returned other bytes");
    }
  } catch (const loraq::Error&) {
    require(!whole.has_value(), "SafetensorsFile refused a file the parser accepts");
  }

  if (whole) check_promises(*whole, file);
  return 0;
}
