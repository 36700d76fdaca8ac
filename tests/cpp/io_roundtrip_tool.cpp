// io_roundtrip_tool IN OUT: reads IN with loraq's reader and writes every tensor (and the metadata)
// to OUT with loraq's writer. The format follows IN's extension: .npy or .safetensors.
// tests/python/test_safetensors_interop.py drives it to check our files against numpy and the
// reference safetensors library until the Python bindings exist.
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "loraq/error.hpp"
#include "loraq/io.hpp"

namespace {

void roundtrip_safetensors(const std::filesystem::path& in, const std::filesystem::path& out) {
  const loraq::io::SafetensorsFile file(in);
  std::vector<loraq::io::TensorSpec> specs;
  for (const loraq::io::TensorInfo& t : file.tensors()) specs.push_back({t.name, t.dtype, t.shape});
  loraq::io::SafetensorsWriter writer(out, std::move(specs), file.metadata());
  // Copy the specs: the writer decides the order (the reference's layout order).
  const std::vector<loraq::io::TensorSpec> order = writer.specs();
  for (const loraq::io::TensorSpec& spec : order) writer.write(spec.name, file.bytes(file.info(spec.name)));
  writer.finish();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT   (both .npy or both .safetensors)\n", argv[0]);
    return 2;
  }
  const std::filesystem::path in = argv[1];
  const std::filesystem::path out = argv[2];
  try {
    if (in.extension() == ".npy" && out.extension() == ".npy") {
      loraq::io::write_npy(out, loraq::io::read_npy(in));
    } else if (in.extension() == ".safetensors" && out.extension() == ".safetensors") {
      roundtrip_safetensors(in, out);
    } else {
      std::fprintf(stderr, "error: expected IN and OUT both .npy or both .safetensors\n");
      return 2;
    }
  } catch (const loraq::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
