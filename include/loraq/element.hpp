// Element encodings: the scalar number formats that block formats are made of.
//
// Every encoding in ../shared/FORMATS.md ("Element encodings") is listed once in `Element`, described
// once in `element_info`, and converted by one templated codec (src/core/element_codec.hpp).
// Conversion of a real x: round to nearest (ties to even, or ties away from zero as an option),
// subnormals kept, finite values beyond the largest normal saturate to +-max (MX convention).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace loraq {

// How a real number is rounded to the nearest representable value when it lies exactly halfway.
enum class Rounding : std::uint8_t {
  nearest_even,  // IEEE 754 default; TensorCast, ml_dtypes, torchao
  nearest_away,  // ties away from zero: microxcaling's "nearest"
};

enum class Element : std::uint8_t {
  e2m1,     // FP4:  +-[0, 0.5, 1, 1.5, 2, 3, 4, 6], no Inf, no NaN, bias 1
  e2m3,     // FP6:  max 7.5, min subnormal 0.125, no Inf, no NaN, bias 1
  e3m2,     // FP6:  max 28, min subnormal 0.0625, no Inf, no NaN, bias 3
  e4m3,     // FP8 OCP "fn": max 448, min subnormal 2^-9, NaN = s.1111.111 only, bias 7
  e5m2,     // FP8: max 57344, min subnormal 2^-16, IEEE Inf and NaN, bias 15
  mx_int8,  // MX int8: two's complement k, value k/64, k in [-127, 127]
  mx_int4,  // MX int4: two's complement k, value k/4, k in [-7, 7]
  int4,     // sint4 codes: two's complement k, value k, k in [-7, 7]
  int8,     // int8_channel codes: two's complement k, value k, k in [-127, 127]
  e8m0,     // MX shared scale: 2^(v-127), v in [0, 254]; 0xFF = NaN; unsigned, no zero
  fp16,     // IEEE binary16
  bf16,     // bfloat16
};
inline constexpr int kElementCount = 12;

struct ElementInfo {
  Element element;
  std::string_view name;
  int bits;               // storage bits of one code
  float max_value;        // largest finite value
  float min_subnormal;    // smallest positive value (for e8m0: 2^-127)
  int emax;               // exponent of the largest binade, used by the MX shared scale
  bool has_inf;
  bool has_nan;
};

const ElementInfo& element_info(Element e);
std::span<const ElementInfo> all_elements();

// Code of the value nearest to x (low `bits` bits used). NaN gives the NaN code where the encoding
// has one and code 0 where it has none (MX carries NaN in the block scale instead); +-Inf gives
// +-Inf where the encoding has it and saturates to +-max otherwise (to NaN for e8m0).
std::uint32_t encode(Element e, float x, Rounding rounding = Rounding::nearest_even);
// Exact value of a code (codes beyond `bits` are masked). NaN codes give a quiet NaN.
float decode(Element e, std::uint32_t code);
// decode(encode(x)): x rounded to the element grid.
float round_to_element(Element e, float x, Rounding rounding = Rounding::nearest_even);

}  // namespace loraq
