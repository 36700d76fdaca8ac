// `--device cpu|cuda|cuda:N`, shared by the subcommands that run LoRaQ's optimization loops.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "loraq/accelerator.hpp"

namespace loraq::cli {

void add_device_option(CLI::App* cmd, std::string& device);

// Null for "cpu". "cuda" takes GPU local_process_rank() % the GPU count, so that the ranks of an
// mpirun on one machine spread over its GPUs; "cuda:N" takes GPU N. Throws Error without a GPU,
// for a number out of range, or in a build without CUDA.
std::unique_ptr<Accelerator> open_device(const std::string& device);

}  // namespace loraq::cli
