// `--device cpu|cuda|cuda:N`, shared by the subcommands that run LoRaQ's optimization loops.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "loraq/accelerator.hpp"

namespace loraq::cli {

void add_device_option(CLI::App* cmd, std::string& device, const std::string& what = "LoRaQ's Adam and rotation loops");

// -1 for "cpu"; the GPU number for "cuda" (local_process_rank() % the GPU count, so that the ranks of
// an mpirun on one machine spread over its GPUs) and "cuda:N". Throws Error for anything else.
int cuda_device_number(const std::string& device);

// Null for "cpu", else the GPU cuda_device_number() names. Throws Error without a GPU, for a number
// out of range, or in a build without CUDA.
std::unique_ptr<Accelerator> open_device(const std::string& device);

}  // namespace loraq::cli
