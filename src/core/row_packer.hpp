// One row at a time into pack()'s byte layout, on the calling thread and without allocating per
// row: pack() runs one per thread, and the linear kernels one per block of activations (which they
// quantize on every call, a few rows at a time, where a whole pack() would allocate and open a
// parallel region each time).
#pragma once

#include <cstdint>
#include <vector>

#include "loraq/format.hpp"

namespace loraq::detail {

struct VectorKernels;

class RowPacker {
 public:
  // Throws Error if options name an instruction set this CPU lacks.
  RowPacker(Format f, std::int64_t cols, const QuantOptions& options);
  // codes: packed_row_bytes(f, cols) bytes; scales: blocks_per_row(f, cols) * scale_bytes(f) bytes.
  void pack(const float* in, float tensor_scale, std::uint8_t* codes, std::uint8_t* scales);

 private:
  Format format_;
  std::int64_t cols_;
  Rounding rounding_;
  const VectorKernels* kernels_;                    // nullptr: the scalar reference
  std::vector<std::uint32_t> raw_codes_, raw_scales_;  // the reference's scratch
};

}  // namespace loraq::detail
