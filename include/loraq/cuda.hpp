// The optional CUDA backend. A build without it (LORAQ_CUDA=OFF, or no nvcc) links a stand-in whose
// functions say how to rebuild; `built()` tells which one this is.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "loraq/accelerator.hpp"
#include "loraq/format.hpp"

namespace loraq::cuda {

bool built();
int device_count();  // 0 without a usable GPU (or without the backend)
bool supports(Format f);  // formats with a device codec: the seven MX formats and sint4

// The same values as loraq::fake_quantize, bit for bit, computed on GPU 0 (host buffers in and out).
// Throws Error without a GPU or for a format supports() rejects.
void fake_quantize(Format f, std::span<const float> in, std::span<float> out, std::int64_t rows, std::int64_t cols,
                   Rounding rounding = Rounding::nearest_even);

// LoRaQ's optimization loops on GPU `device` (loraq/accelerator.hpp), for `loraq quantize --device
// cuda`. Throws Error naming the cause without a GPU, for a device number out of range, or in a
// build without the backend.
std::unique_ptr<Accelerator> make_accelerator(int device = 0);

}  // namespace loraq::cuda
