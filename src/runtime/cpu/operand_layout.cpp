// Weights and activations from the codec's packed form into the kernels' layout (kernel_layout.hpp).
#include <algorithm>
#include <bit>
#include <cstring>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "core/fast_scales.hpp"
#include "core/packing.hpp"
#include "core/row_packer.hpp"
#include "loraq/element.hpp"
#include "loraq/error.hpp"
#include "runtime/cpu/kernel_layout.hpp"

namespace loraq::runtime {
namespace {

// Signed 4-bit codes, low nibble first, to bytes. __restrict: int8 stores may alias anything, and
// without it the compiler keeps this loop scalar (it ran on every activation row).
void unpack_nibbles(const std::uint8_t* __restrict packed, std::int64_t bytes, std::int8_t* __restrict codes) {
  for (std::int64_t i = 0; i < bytes; ++i) {
    codes[2 * i] = std::int8_t(std::int8_t(packed[i] << 4) >> 4);
    codes[2 * i + 1] = std::int8_t(std::int8_t(packed[i]) >> 4);
  }
}

// Sum of one chunk's codes. With SSE2 (every x86-64 CPU): the codes offset by 128 are unsigned, and
// psadbw against zero sums 8 of them per instruction; the plain loop compiled to some 40
// instructions of widening, and ran on every chunk of every activation row.
std::int32_t chunk_sum(const std::int8_t* codes) {
#ifdef __SSE2__
  const __m128i flip = _mm_set1_epi8(char(0x80)), zero = _mm_setzero_si128();
  const __m128i a = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)), flip);
  const __m128i b = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16)), flip);
  const __m128i s = _mm_add_epi64(_mm_sad_epu8(a, zero), _mm_sad_epu8(b, zero));
  return std::int32_t(_mm_cvtsi128_si32(s) + _mm_cvtsi128_si32(_mm_unpackhi_epi64(s, s))) - 128 * kChunk;
#else
  std::int32_t sum = 0;
  for (int j = 0; j < kChunk; ++j) sum += codes[j];
  return sum;
#endif
}

// Two's complement code of `bits` bits as an integer.
int signed_code(std::uint32_t code, int bits) {
  const int half = 1 << (bits - 1);
  return int((code ^ std::uint32_t(half)) & ((1u << bits) - 1)) - half;
}

// Every integer element's value is code x unit: the value of code 1.
float element_unit(Format f) { return decode(format_info(f).element, 1); }

float scale_value(ScaleType type, std::uint32_t code) {
  switch (type) {
    case ScaleType::e8m0:
      // 2^(code - 127) is the float with that biased exponent; codes 0 (a subnormal) and 255 (NaN)
      // go through the element table.
      if (code > 0 && code < 255) return std::bit_cast<float>(code << 23);
      return decode(Element::e8m0, code);
    case ScaleType::fp16:
      // By moving the bits (decode() goes through ldexp, and this runs for every block of every
      // sint4 activation row); the same helper the codecs use.
      return fast_fp16_value(static_cast<std::uint16_t>(code));
    case ScaleType::fp32: {
      float v;
      std::memcpy(&v, &code, sizeof v);
      return v;
    }
    case ScaleType::none:
    case ScaleType::e4m3: break;
  }
  throw Error("integer kernels: unexpected scale type");
}

// Per row: the signed codes (padded with zeros to `padded` values) and the per-chunk scale values.
struct RowDecoder {
  Format format;
  const FormatInfo& info;
  std::int64_t cols, chunks, row_bytes, blocks;
  std::vector<std::uint32_t> raw, raw_scales;
  float unit;  // the value of code 1

  RowDecoder(Format f, std::int64_t cols_)
      : format(f), info(format_info(f)), cols(cols_), chunks((cols_ + kChunk - 1) / kChunk),
        row_bytes(packed_row_bytes(f, cols_)), blocks(blocks_per_row(f, cols_)),
        raw(std::size_t(row_bytes * 8 / element_bits(f))), raw_scales(std::size_t(blocks)), unit(element_unit(f)) {}

  // One row in pack()'s layout: packed codes (row_bytes) and scale bytes (blocks x scale_bytes).
  void decode_row(const std::uint8_t* packed, const std::uint8_t* scale_bytes_in, std::int8_t* codes,
                  float* chunk_scales) {
    const int bits = element_bits(format);
    const std::int64_t padded = chunks * kChunk, n = std::min(cols, padded);
    // Bytes and nibbles straight to int8 (the common cases, on every activation row); other widths
    // through the generic unpacker.
    if (bits == 8) {
      std::memcpy(codes, packed, std::size_t(n));
    } else if (bits == 4) {
      unpack_nibbles(packed, n / 2, codes);
      if (n % 2) codes[n - 1] = std::int8_t(std::int8_t(packed[n / 2] << 4) >> 4);
    } else {
      detail::unpack_codes(bits, packed, std::int64_t(raw.size()), raw.data());
      for (std::int64_t c = 0; c < n; ++c) codes[c] = std::int8_t(signed_code(raw[std::size_t(c)], bits));
    }
    std::fill(codes + n, codes + padded, std::int8_t(0));
    detail::load_scales(info.scale, scale_bytes_in, blocks, raw_scales.data());
    decode_scales(raw_scales.data(), chunk_scales);
  }

  // Each block's scale value (times the element's unit) over the chunks it covers: every integer
  // format's block is whole chunks (32 or 64 values) or the whole row. Block by block, not chunk by
  // chunk with a division for the block's index, which cost a third of activation quantization.
  void decode_scales(const std::uint32_t* scale_codes, float* chunk_scales) const {
    const std::int64_t per_block = info.block_size == 0 ? chunks : info.block_size / kChunk;
    if (per_block < 1 || (info.block_size != 0 && info.block_size % kChunk != 0))
      throw Error("integer kernels: " + std::string(info.name) + " blocks are not whole " + std::to_string(kChunk) +
                  "-value chunks");
    for (std::int64_t b = 0, c = 0; c < chunks; ++b) {
      const float value = scale_value(info.scale, scale_codes[b]) * unit;
      for (std::int64_t i = 0; i < per_block && c < chunks; ++i) chunk_scales[c++] = value;
    }
  }
};

}  // namespace

bool integer_format(Format f) {
  switch (f) {
    case Format::sint4:
    case Format::mxint4:
    case Format::mxint8:
    case Format::int8_channel: return true;
    case Format::mxfp8_e4m3:
    case Format::mxfp8_e5m2:
    case Format::mxfp6_e2m3:
    case Format::mxfp6_e3m2:
    case Format::mxfp4:
    case Format::nvfp4:
    case Format::fp16:
    case Format::bf16: return false;
  }
  return false;
}

WeightPanels make_panels(const PackedMatrix& packed) {
  const DecodedRows d = decode_rows(packed);  // throws for a format that is not an integer one
  WeightPanels p;
  p.bits = element_bits(packed.format);
  p.rows = d.rows;
  p.cols = d.cols;
  p.chunks = d.chunks;
  p.panels = (d.rows + kPanel - 1) / kPanel;
  p.codes.assign(std::size_t(p.pairs() * kMaxPanels * p.chunks * p.chunk_bytes()), p.bits == 4 ? 0x88 : 0);
  p.scales.assign(std::size_t(p.pairs() * p.chunks * kPairScales), 0.0f);
  for (std::int64_t row = 0; row < p.rows; ++row) {
    const std::int8_t* codes = d.codes.data() + row * d.chunks * kChunk;
    const float* chunk_scales = d.scales.data() + row * d.chunks;
    const std::int64_t panel = row / kPanel, r = row % kPanel;
    for (std::int64_t c = 0; c < p.chunks; ++c) {
      const std::int8_t* k = codes + c * kChunk;
      if (p.bits == 4) {
        std::uint8_t* chunk = p.codes.data() + p.code_offset(panel) + c * kPairChunk4;
        for (int v = 0; v < 4; ++v)
          for (int j = 0; j < 4; ++j)
            chunk[v * kPairVector + 4 * r + j] = std::uint8_t((k[8 * v + j] + 8) | ((k[8 * v + 4 + j] + 8) << 4));
      } else {
        std::uint8_t* chunk = p.codes.data() + p.code_offset(panel) + c * kPairChunk8;
        for (int g = 0; g < 8; ++g)
          for (int j = 0; j < 4; ++j) chunk[g * kPairVector + 4 * r + j] = std::uint8_t(k[4 * g + j]);
      }
      p.scales[std::size_t(p.scale_offset(panel) + c * kPairScales + r)] = chunk_scales[c];
    }
  }
  return p;
}

UpProjection::UpProjection(const std::vector<float>& up, std::int64_t out, std::int64_t rank_) : rank(rank_) {
  const std::int64_t groups = (out + stride - 1) / stride;
  values.assign(std::size_t(groups * rank * stride), 0.0f);
  for (std::int64_t row = 0; row < out; ++row)
    for (std::int64_t j = 0; j < rank; ++j)
      values[std::size_t(((row / stride) * rank + j) * stride + row % stride)] = up[std::size_t(row * rank + j)];
}

DecodedRows decode_rows(const PackedMatrix& packed) {
  if (!integer_format(packed.format))
    throw Error("integer kernels: " + std::string(format_info(packed.format).name) + " is not an integer format");
  DecodedRows d;
  d.rows = packed.rows;
  d.cols = packed.cols;
  d.chunks = (packed.cols + kChunk - 1) / kChunk;
  d.codes.resize(std::size_t(d.rows * d.chunks * kChunk));
  d.scales.resize(std::size_t(d.rows * d.chunks));
  RowDecoder decoder(packed.format, packed.cols);
  for (std::int64_t row = 0; row < d.rows; ++row)
    decoder.decode_row(packed.codes.data() + row * decoder.row_bytes,
                       packed.scales.data() + row * decoder.blocks * scale_bytes(packed.format),
                       d.codes.data() + row * d.chunks * kChunk, d.scales.data() + row * d.chunks);
  return d;
}

void quantize_activations(Format format, const float* x, std::int64_t rows, std::int64_t cols, ActivationRows& out) {
  if (!integer_format(format) || format_info(format).tensor_scale)
    throw Error("integer kernels: " + std::string(format_info(format).name) + " is not an integer activation format");
  QuantOptions one_thread;
  one_thread.threads = 1;
  out.rows = rows;
  const std::int64_t chunks = out.chunks = (cols + kChunk - 1) / kChunk;
  const std::int64_t groups = (rows + kTokenGroup - 1) / kTokenGroup, slots = groups * kTokenGroup * chunks;
  out.codes.resize(std::size_t(slots * kChunk));
  out.scales.resize(std::size_t(slots));
  out.offset4.resize(std::size_t(slots));
  out.offset8.resize(std::size_t(slots));
  // Zeros in the last group's unused slots (every other slot is written below).
  for (std::int64_t row = rows; row < groups * kTokenGroup; ++row)
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t slot = ((groups - 1) * chunks + c) * kTokenGroup + row % kTokenGroup;
      std::memset(out.codes.data() + slot * kChunk, 0, kChunk);
      out.scales[std::size_t(slot)] = 0.0f;
      out.offset4[std::size_t(slot)] = out.offset8[std::size_t(slot)] = 0;
    }
  // Each row's codes and chunk scales row-major first (what the codec and RowDecoder write), then
  // interleaved into the groups.
  thread_local std::vector<std::int8_t> row_major;
  thread_local std::vector<float> chunk_scales;
  row_major.resize(std::size_t(rows * chunks * kChunk));
  chunk_scales.resize(std::size_t(chunks));
  RowDecoder decoder(format, cols);
  const std::int64_t scale_row_bytes = decoder.blocks * scale_bytes(format);
  // All rows in one call of the codec where they concatenate (a 1152-value mxint8 row is 36 blocks,
  // the vector codecs work on groups of 16). 8-bit codes in whole chunks are the kernels' int8 codes
  // already, packed in place; other widths are unpacked row by row.
  const bool one_call = detail::rows_concatenate(format, cols);
  const bool in_place = one_call && element_bits(format) == 8 && cols == chunks * kChunk;
  thread_local std::vector<std::uint8_t> packed_codes, packed_scales;  // pack()'s layout
  packed_codes.resize(std::size_t(in_place ? 0 : (one_call ? rows : 1) * decoder.row_bytes));
  packed_scales.resize(std::size_t((one_call ? rows : 1) * scale_row_bytes));
  detail::RowPacker packer(format, one_call ? rows * cols : cols, one_thread);
  if (one_call)
    packer.pack(x, 1.0f, in_place ? reinterpret_cast<std::uint8_t*>(row_major.data()) : packed_codes.data(),
                packed_scales.data());
  for (std::int64_t row = 0; row < rows; ++row) {
    std::int8_t* codes = row_major.data() + row * chunks * kChunk;
    float* scales = chunk_scales.data();
    const std::uint8_t* row_codes = packed_codes.data() + (one_call ? row * decoder.row_bytes : 0);
    const std::uint8_t* row_scales = packed_scales.data() + (one_call ? row * scale_row_bytes : 0);
    if (!one_call) packer.pack(x + row * cols, 1.0f, packed_codes.data(), packed_scales.data());
    if (in_place) {
      detail::load_scales(format_info(format).scale, row_scales, decoder.blocks, decoder.raw_scales.data());
      decoder.decode_scales(decoder.raw_scales.data(), scales);
    } else {
      decoder.decode_row(row_codes, row_scales, codes, scales);
    }
    const std::int64_t first = (row / kTokenGroup) * chunks * kTokenGroup + row % kTokenGroup;
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t slot = first + c * kTokenGroup;
      std::memcpy(out.codes.data() + slot * kChunk, codes + c * kChunk, kChunk);
      const std::int32_t sum = chunk_sum(codes + c * kChunk);
      out.scales[std::size_t(slot)] = scales[c];
      out.offset4[std::size_t(slot)] = -8 * sum;
      out.offset8[std::size_t(slot)] = -128 * sum;
    }
  }
}

}  // namespace loraq::runtime
