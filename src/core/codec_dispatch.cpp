// The public codec entry points: argument checks, the nvfp4 tensor scale, threads over rows, and the
// choice between the scalar reference and a vectorized kernel table.
#include <algorithm>
#include <string>
#include <vector>

#include <omp.h>

#include "block_reference.hpp"
#include "block_scales.hpp"
#include "loraq/error.hpp"
#include "loraq/format.hpp"
#include "packing.hpp"
#include "row_packer.hpp"
#include "simd/vector_kernels.hpp"

namespace loraq {
namespace {

void check_shape(Format f, std::size_t size, std::int64_t rows, std::int64_t cols, const char* what) {
  if (rows < 0 || cols < 0 || (cols > 0 && rows > INT64_MAX / cols) || size < std::size_t(rows * cols))
    throw Error(std::string(what) + ": a " + std::to_string(rows) + " x " + std::to_string(cols) + " " +
                std::string(format_info(f).name) + " matrix needs " + std::to_string(rows) + " * " +
                std::to_string(cols) + " floats, the buffer holds " + std::to_string(size));
}

// The vectorized kernels for f, or nullptr for the scalar reference. The 16-bit casts are vectorized
// for fake quantization with ties-even rounding only: F16C has no ties-away, and packing happens once
// per weight where fake quantization of activations happens on every call.
const detail::VectorKernels* vector_kernels(Format f, const QuantOptions& options, bool packing = false) {
  const Isa isa = options.isa ? *options.isa : default_isa();
  if (!isa_available(isa)) throw Error("instruction set " + std::string(isa_name(isa)) + " is not available here");
  if ((f == Format::fp16 || f == Format::bf16) && (packing || options.rounding != Rounding::nearest_even))
    return nullptr;
  const detail::VectorKernels* kernels = nullptr;
  switch (isa) {
    case Isa::scalar: return nullptr;
    case Isa::avx2: kernels = detail::avx2_kernels(); break;
    case Isa::avx512: kernels = detail::avx512_kernels(); break;
  }
  return kernels && kernels->supports(f) ? kernels : nullptr;
}

int thread_count(const QuantOptions& options) { return options.threads > 0 ? options.threads : omp_get_max_threads(); }

// nvfp4's per-tensor scale from the largest finite magnitude (max is exact in any order).
float tensor_scale_of(Format f, std::span<const float> values, const QuantOptions& options) {
  if (!format_info(f).tensor_scale) return 1.0f;
  const detail::VectorKernels* kernels = vector_kernels(f, options);
  if (!kernels) return detail::nvfp4_tensor_scale(detail::finite_amax(values));
  const auto n = static_cast<std::int64_t>(values.size());
  const std::int64_t chunk = 1 << 16;
  float amax = 0.0f;
#pragma omp parallel for reduction(max : amax) schedule(static) num_threads(thread_count(options))
  for (std::int64_t start = 0; start < n; start += chunk)
    amax = std::max(amax, kernels->finite_amax(values.data() + start, std::min(chunk, n - start)));
  return detail::nvfp4_tensor_scale(amax);
}

// This thread's share of `count` rows, the same contiguous split as schedule(static).
struct RowRange {
  std::int64_t begin, end;
};
RowRange thread_rows(std::int64_t count) {
  const std::int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
  const std::int64_t base = count / n, extra = count % n;
  const std::int64_t begin = t * base + std::min(t, extra);
  return {begin, begin + base + (t < extra ? 1 : 0)};
}

}  // namespace

namespace detail {

RowPacker::RowPacker(Format f, std::int64_t cols, const QuantOptions& options)
    : format_(f), cols_(cols), rounding_(options.rounding), kernels_(vector_kernels(f, options, /*packing=*/true)) {
  if (!kernels_) raw_codes_.resize(std::size_t(padded_cols(f, cols))), raw_scales_.resize(std::size_t(blocks_per_row(f, cols) + 1));
}

void RowPacker::pack(const float* in, float tensor_scale, std::uint8_t* codes, std::uint8_t* scales) {
  if (kernels_) {
    kernels_->pack_row(format_, in, cols_, tensor_scale, rounding_, codes, scales);
    return;
  }
  reference_encode_row(format_, in, cols_, tensor_scale, rounding_, raw_codes_.data(), raw_scales_.data());
  pack_codes(element_bits(format_), raw_codes_.data(), padded_cols(format_, cols_), codes);
  store_scales(format_info(format_).scale, raw_scales_.data(), blocks_per_row(format_, cols_), scales);
}

}  // namespace detail

void fake_quantize(Format f, std::span<const float> in, std::span<float> out, std::int64_t rows, std::int64_t cols,
                   const QuantOptions& options) {
  check_shape(f, in.size(), rows, cols, "fake_quantize input");
  check_shape(f, out.size(), rows, cols, "fake_quantize output");
  const float tensor_scale = tensor_scale_of(f, in.first(std::size_t(rows * cols)), options);
  const detail::VectorKernels* kernels = vector_kernels(f, options);
  const std::int64_t blocks = blocks_per_row(f, cols);
  // An output larger than the caches is written around them (non-temporal stores): it would be
  // evicted before anyone reads it, and skipping the read-for-ownership saves a third of the traffic.
  const bool stream = rows * cols * std::int64_t(sizeof(float)) >= (std::int64_t(8) << 20);
#pragma omp parallel num_threads(thread_count(options))
  {
    if (kernels && detail::rows_concatenate(f, cols)) {
      const RowRange mine = thread_rows(rows);
      if (mine.end > mine.begin)
        kernels->fake_quantize_row(f, in.data() + mine.begin * cols, out.data() + mine.begin * cols,
                                   (mine.end - mine.begin) * cols, tensor_scale, options.rounding, stream);
      if (stream) kernels->stream_fence();
    } else {
      std::vector<std::uint32_t> codes, scales;  // scratch of the scalar path, one per thread
      if (!kernels) codes.resize(std::size_t(detail::padded_cols(f, cols))), scales.resize(std::size_t(blocks + 1));
#pragma omp for schedule(static) nowait
      for (std::int64_t r = 0; r < rows; ++r) {
        const float* src = in.data() + r * cols;
        float* dst = out.data() + r * cols;
        if (kernels) {
          kernels->fake_quantize_row(f, src, dst, cols, tensor_scale, options.rounding, stream);
        } else {
          detail::reference_encode_row(f, src, cols, tensor_scale, options.rounding, codes.data(), scales.data());
          detail::reference_decode_row(f, codes.data(), scales.data(), tensor_scale, cols, dst);
        }
      }
      if (kernels && stream) kernels->stream_fence();  // before the region's closing barrier
    }
  }
}

PackedMatrix pack(Format f, std::span<const float> in, std::int64_t rows, std::int64_t cols,
                  const QuantOptions& options) {
  check_shape(f, in.size(), rows, cols, "pack input");
  PackedMatrix packed;
  packed.format = f;
  packed.rows = rows;
  packed.cols = cols;
  packed.tensor_scale = tensor_scale_of(f, in.first(std::size_t(rows * cols)), options);
  const std::int64_t row_bytes = packed_row_bytes(f, cols);
  const std::int64_t blocks = blocks_per_row(f, cols);
  const int scale_width = scale_bytes(f);
  packed.codes.assign(std::size_t(rows * row_bytes), 0);
  packed.scales.assign(std::size_t(rows * blocks * scale_width), 0);
  const detail::RowPacker prototype(f, cols, options);  // throws here, outside the parallel region
  const detail::VectorKernels* kernels = vector_kernels(f, options, /*packing=*/true);
#pragma omp parallel num_threads(thread_count(options))
  {
    if (kernels && detail::rows_concatenate(f, cols)) {
      const RowRange mine = thread_rows(rows);
      if (mine.end > mine.begin)
        kernels->pack_row(f, in.data() + mine.begin * cols, (mine.end - mine.begin) * cols, packed.tensor_scale,
                          options.rounding, packed.codes.data() + mine.begin * row_bytes,
                          packed.scales.data() + mine.begin * blocks * scale_width);
    } else {
      detail::RowPacker packer = prototype;
#pragma omp for schedule(static)
      for (std::int64_t r = 0; r < rows; ++r)
        packer.pack(in.data() + r * cols, packed.tensor_scale, packed.codes.data() + r * row_bytes,
                    packed.scales.data() + r * blocks * scale_width);
    }
  }
  return packed;
}

std::vector<float> unpack(const PackedMatrix& packed, const QuantOptions& options) {
  std::vector<float> values(std::size_t(packed.rows * packed.cols));
  unpack(packed, values, options);
  return values;
}

void unpack(const PackedMatrix& packed, std::span<float> out, const QuantOptions& options) {
  const Format f = packed.format;
  check_shape(f, out.size(), packed.rows, packed.cols, "unpack output");
  const std::int64_t row_bytes = packed_row_bytes(f, packed.cols);
  const std::int64_t blocks = blocks_per_row(f, packed.cols);
  const int scale_width = scale_bytes(f);
  if (packed.codes.size() != std::size_t(packed.rows * row_bytes) ||
      packed.scales.size() != std::size_t(packed.rows * blocks * scale_width))
    throw Error("unpack: a " + std::to_string(packed.rows) + " x " + std::to_string(packed.cols) + " " +
                std::string(format_info(f).name) + " matrix needs " + std::to_string(packed.rows * row_bytes) +
                " code bytes and " + std::to_string(packed.rows * blocks * scale_width) + " scale bytes, got " +
                std::to_string(packed.codes.size()) + " and " + std::to_string(packed.scales.size()));
  const std::int64_t padded = detail::padded_cols(f, packed.cols);
#pragma omp parallel num_threads(thread_count(options))
  {
    std::vector<std::uint32_t> codes(static_cast<std::size_t>(padded)), scales(static_cast<std::size_t>(blocks + 1));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < packed.rows; ++r) {
      detail::unpack_codes(element_bits(f), packed.codes.data() + r * row_bytes, padded, codes.data());
      detail::load_scales(format_info(f).scale, packed.scales.data() + r * blocks * scale_width, blocks, scales.data());
      detail::reference_decode_row(f, codes.data(), scales.data(), packed.tensor_scale, packed.cols,
                                   out.data() + r * packed.cols);
    }
  }
}

}  // namespace loraq
