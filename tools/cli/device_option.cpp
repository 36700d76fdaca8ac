#include "device_option.hpp"

#include <charconv>

#include "loraq/cuda.hpp"
#include "loraq/dist.hpp"
#include "loraq/error.hpp"

namespace loraq::cli {

void add_device_option(CLI::App* cmd, std::string& device, const std::string& what) {
  cmd->add_option("--device", device, "Where " + what + " run: cpu, cuda (GPU local rank % GPUs under mpirun) or cuda:N")
      ->capture_default_str();
}

int cuda_device_number(const std::string& device) {
  if (device == "cpu") return -1;
  if (device == "cuda") {
    const int count = cuda::device_count();
    return count > 0 ? local_process_rank() % count : 0;
  }
  if (device.rfind("cuda:", 0) == 0) {
    const std::string number = device.substr(5);
    int n = -1;
    const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), n);
    if (ec == std::errc() && end == number.data() + number.size() && n >= 0) return n;
  }
  throw Error("--device " + device + ": expected cpu, cuda or cuda:N (N a GPU number from 0)");
}

std::unique_ptr<Accelerator> open_device(const std::string& device) {
  const int n = cuda_device_number(device);
  return n < 0 ? nullptr : cuda::make_accelerator(n);
}

}  // namespace loraq::cli
