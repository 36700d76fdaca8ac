// Device names ("cpu", "cuda", "cuda:N"), shared by the command line's --device and the Python
// package's device=. Plain C++, in builds with and without CUDA, so that a bad name is the same error
// everywhere.
#include <charconv>
#include <string>

#include "loraq/cuda.hpp"
#include "loraq/error.hpp"

namespace loraq::cuda {

int device_number(std::string_view name, int plain_cuda, std::string_view what) {
  if (name == "cpu") return -1;
  if (name == "cuda") return plain_cuda;
  if (name.substr(0, 5) == "cuda:") {
    const std::string_view number = name.substr(5);
    int n = -1;
    const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), n);
    if (ec == std::errc() && end == number.data() + number.size() && n >= 0) return n;
  }
  throw Error(std::string(what) + " " + std::string(name) + ": expected cpu, cuda or cuda:N (N a GPU number from 0)");
}

}  // namespace loraq::cuda
