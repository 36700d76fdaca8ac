#include "block_reference.hpp"

#include <bit>
#include <cmath>
#include <limits>

#include "block_scales.hpp"
#include "element_codec.hpp"

namespace loraq::detail {
namespace {

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

struct BlockStats {
  float amax = 0.0f;
  bool finite = true;
};

BlockStats block_stats(const float* x, std::int64_t n) {
  BlockStats s;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) s.finite = false;
    s.amax = std::max(s.amax, std::fabs(x[i]));
  }
  return s;
}

// FORMATS.md "MX shared scale", steps 1-6.
template <class Codec>
void encode_mx_block(const float* x, std::int64_t n, Rounding rounding, std::uint32_t* codes, std::uint32_t& scale) {
  const BlockStats s = block_stats(x, n);
  if (!s.finite) { scale = kE8m0Nan; return; }  // codes stay 0; every value decodes to NaN
  if (s.amax == 0.0f) { scale = 0; return; }
  const int shared_exp = mx_shared_exponent(s.amax, Codec::emax);
  scale = static_cast<std::uint32_t>(shared_exp + 127);
  for (std::int64_t i = 0; i < n; ++i) codes[i] = Codec::encode(std::ldexp(double(x[i]), -shared_exp), rounding);
}

template <class Codec>
void decode_mx_block(const std::uint32_t* codes, std::uint32_t scale, std::int64_t n, float* out) {
  for (std::int64_t i = 0; i < n; ++i)
    out[i] = scale == kE8m0Nan ? kNan : static_cast<float>(std::ldexp(double(Codec::decode(codes[i])), int(scale) - 127));
}

void encode_sint4_block(const float* x, std::int64_t n, Rounding rounding, std::uint32_t* codes, std::uint32_t& scale) {
  const BlockStats s = block_stats(x, n);
  if (!s.finite) { scale = kFp16Nan; return; }
  scale = FP16::encode(s.amax / 7.0f, Rounding::nearest_even);  // FORMATS.md: fp16_round(amax / 7)
  const float step = FP16::decode(scale);
  if (step == 0.0f) return;  // zero group, or amax / 7 below fp16's smallest subnormal: all codes 0
  for (std::int64_t i = 0; i < n; ++i) codes[i] = Int4::encode(x[i] / step, rounding);
}

void encode_nvfp4_block(const float* x, std::int64_t n, float tensor_scale, Rounding rounding, std::uint32_t* codes,
                        std::uint32_t& scale) {
  const BlockStats s = block_stats(x, n);
  if (!s.finite) { scale = kE4m3Nan; return; }
  if (tensor_scale == 0.0f) { scale = 0; return; }
  scale = E4M3::encode(s.amax / 6.0f / tensor_scale, Rounding::nearest_even);  // left to right, fp32
  const float denominator = E4M3::decode(scale) * tensor_scale;
  if (denominator == 0.0f) return;
  for (std::int64_t i = 0; i < n; ++i) codes[i] = E2M1::encode(x[i] / denominator, rounding);
}

void encode_int8_row(const float* x, std::int64_t n, Rounding rounding, std::uint32_t* codes, std::uint32_t& scale) {
  const BlockStats s = block_stats(x, n);
  if (!s.finite) { scale = std::bit_cast<std::uint32_t>(kNan); return; }
  const float step = s.amax / 127.0f;
  scale = std::bit_cast<std::uint32_t>(step);
  if (step == 0.0f) return;
  for (std::int64_t i = 0; i < n; ++i) codes[i] = Int8::encode(x[i] / step, rounding);
}

// Scaled integer formats: value = k * step in fp32; a NaN step decodes to NaN.
template <class Codec>
void decode_scaled_block(const std::uint32_t* codes, float step, std::int64_t n, float* out) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = std::isnan(step) ? kNan : Codec::decode(codes[i]) * step;
}

template <class Codec>
void encode_mx_row(const float* row, std::int64_t cols, Rounding rounding, std::uint32_t* codes, std::uint32_t* scales) {
  for (std::int64_t b = 0, start = 0; start < cols; ++b, start += 32)
    encode_mx_block<Codec>(row + start, std::min<std::int64_t>(32, cols - start), rounding, codes + start, scales[b]);
}

template <class Codec>
void decode_mx_row(const std::uint32_t* codes, const std::uint32_t* scales, std::int64_t cols, float* out) {
  for (std::int64_t b = 0, start = 0; start < cols; ++b, start += 32)
    decode_mx_block<Codec>(codes + start, scales[b], std::min<std::int64_t>(32, cols - start), out + start);
}

}  // namespace

std::int64_t padded_cols(Format f, std::int64_t cols) {
  const int block = format_info(f).block_size;
  return block <= 1 ? cols : blocks_per_row(f, cols) * block;
}

void reference_encode_row(Format f, const float* row, std::int64_t cols, float tensor_scale, Rounding rounding,
                          std::uint32_t* codes, std::uint32_t* scale_codes) {
  std::fill(codes, codes + padded_cols(f, cols), 0u);
  switch (f) {
    case Format::mxfp8_e4m3: return encode_mx_row<E4M3>(row, cols, rounding, codes, scale_codes);
    case Format::mxfp8_e5m2: return encode_mx_row<E5M2>(row, cols, rounding, codes, scale_codes);
    case Format::mxfp6_e2m3: return encode_mx_row<E2M3>(row, cols, rounding, codes, scale_codes);
    case Format::mxfp6_e3m2: return encode_mx_row<E3M2>(row, cols, rounding, codes, scale_codes);
    case Format::mxfp4: return encode_mx_row<E2M1>(row, cols, rounding, codes, scale_codes);
    case Format::mxint8: return encode_mx_row<MxInt8>(row, cols, rounding, codes, scale_codes);
    case Format::mxint4: return encode_mx_row<MxInt4>(row, cols, rounding, codes, scale_codes);
    case Format::sint4:
      for (std::int64_t b = 0, start = 0; start < cols; ++b, start += 64)
        encode_sint4_block(row + start, std::min<std::int64_t>(64, cols - start), rounding, codes + start, scale_codes[b]);
      return;
    case Format::nvfp4:
      for (std::int64_t b = 0, start = 0; start < cols; ++b, start += 16)
        encode_nvfp4_block(row + start, std::min<std::int64_t>(16, cols - start), tensor_scale, rounding, codes + start,
                           scale_codes[b]);
      return;
    case Format::int8_channel: return encode_int8_row(row, cols, rounding, codes, scale_codes[0]);
    case Format::fp16:
      for (std::int64_t i = 0; i < cols; ++i) codes[i] = FP16::encode(row[i], rounding);
      return;
    case Format::bf16:
      for (std::int64_t i = 0; i < cols; ++i) codes[i] = BF16::encode(row[i], rounding);
      return;
  }
}

void reference_decode_row(Format f, const std::uint32_t* codes, const std::uint32_t* scale_codes, float tensor_scale,
                          std::int64_t cols, float* out) {
  switch (f) {
    case Format::mxfp8_e4m3: return decode_mx_row<E4M3>(codes, scale_codes, cols, out);
    case Format::mxfp8_e5m2: return decode_mx_row<E5M2>(codes, scale_codes, cols, out);
    case Format::mxfp6_e2m3: return decode_mx_row<E2M3>(codes, scale_codes, cols, out);
    case Format::mxfp6_e3m2: return decode_mx_row<E3M2>(codes, scale_codes, cols, out);
    case Format::mxfp4: return decode_mx_row<E2M1>(codes, scale_codes, cols, out);
    case Format::mxint8: return decode_mx_row<MxInt8>(codes, scale_codes, cols, out);
    case Format::mxint4: return decode_mx_row<MxInt4>(codes, scale_codes, cols, out);
    case Format::sint4:
      for (std::int64_t b = 0, start = 0; start < cols; ++b, start += 64)
        decode_scaled_block<Int4>(codes + start, FP16::decode(scale_codes[b]),
                                  std::min<std::int64_t>(64, cols - start), out + start);
      return;
    case Format::nvfp4:
      for (std::int64_t b = 0, start = 0; start < cols; ++b, start += 16) {
        const float block_scale = E4M3::decode(scale_codes[b]);
        const std::int64_t n = std::min<std::int64_t>(16, cols - start);
        for (std::int64_t i = 0; i < n; ++i)  // FORMATS.md: element * block_scale * global, left to right
          out[start + i] = std::isnan(block_scale) ? kNan : E2M1::decode(codes[start + i]) * block_scale * tensor_scale;
      }
      return;
    case Format::int8_channel:
      return decode_scaled_block<Int8>(codes, std::bit_cast<float>(scale_codes[0]), cols, out);
    case Format::fp16:
      for (std::int64_t i = 0; i < cols; ++i) out[i] = FP16::decode(codes[i]);
      return;
    case Format::bf16:
      for (std::int64_t i = 0; i < cols; ++i) out[i] = BF16::decode(codes[i]);
      return;
  }
}

}  // namespace loraq::detail
