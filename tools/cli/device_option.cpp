#include "device_option.hpp"

#include "loraq/cuda.hpp"
#include "loraq/dist.hpp"
#include "loraq/error.hpp"

namespace loraq::cli {

void add_device_option(CLI::App* cmd, std::string& device, const std::string& what) {
  cmd->add_option("--device", device, "Where " + what + " run: cpu, cuda (GPU local rank % GPUs under mpirun) or cuda:N")
      ->capture_default_str();
}

int cuda_device_number(const std::string& device) {
  int plain_cuda = 0;  // only a plain "cuda" asks the driver for the GPU count (the rank's share)
  if (device == "cuda") {
    const int count = cuda::device_count();
    if (count > 0) plain_cuda = local_process_rank() % count;
  }
  return cuda::device_number(device, plain_cuda, "--device");
}

std::unique_ptr<Accelerator> open_device(const std::string& device) {
  const int n = cuda_device_number(device);
  return n < 0 ? nullptr : cuda::make_accelerator(n);
}

}  // namespace loraq::cli
