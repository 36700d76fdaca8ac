// The integer kernels' data layout and their table (one entry per instruction set).
//
// Weights are repacked once into panels of 8 output rows, so that one AVX2 register of int32 lanes
// holds one partial dot product per row and the per-row scales apply as one vector multiply.
// Within a panel, each 32-value chunk of the reduction dimension is stored as:
//   4-bit weights (128 bytes): vector v = 0..3 of 32 bytes; byte 4 * row + j holds, in its low nibble,
//     code(row, 32c + 8v + j) + 8 and, in its high nibble, code(row, 32c + 8v + 4 + j) + 8. The +8
//     makes the nibbles unsigned (vpmaddubsw and vpdpbusd multiply unsigned by signed bytes); the
//     kernels add -8 x (sum of the chunk's activation codes) to undo it.
//   8-bit weights (256 bytes): vector g = 0..7; byte 4 * row + j holds code(row, 32c + 4g + j).
// Scales: one fp32 per (chunk, row), the block's scale times the element's unit (1/64 for mxint8,
// 1/4 for mxint4, 1 for sint4 and int8_channel), so that value = code x scale exactly.
// Panels are stored in pairs (kMaxPanels; an odd last panel beside a zero one), each 32-byte vector
// of panel 2q followed by the same vector of panel 2q + 1, and likewise their 8 scales: one 64-byte
// load gives the AVX-512 kernels both panels (two 32-byte loads and an insert cost a shuffle per
// vector on the port vpdpbusd needs). A one-panel kernel steps over its partner's bytes.
// Activations: per token, int8 codes padded to whole chunks, and per chunk one fp32 scale and the
// two offsets that undo the weights' unsigned storage: -8 x (sum of codes) for 4-bit weights,
// -128 x (sum of codes) for 8-bit ones the VNNI kernels store with their top bit flipped. The VNNI
// kernels start each chunk's int32 sums at the offset, a broadcast from memory (a load, no vector
// ALU work), instead of subtracting it per token and chunk. Tokens are interleaved in groups of
// kTokenGroup: a group stores chunk 0 of its tokens one after the other, then chunk 1, and so on
// (scales and offsets likewise), so that a kernel reaches every token of its tile from one pointer
// per chunk at constant offsets. With a pointer per token, 12 tokens did not fit the general
// registers, and the spills and pointer updates cost more than the kernel's vector work could hide.
#pragma once

#include <cstdint>
#include <vector>

#include "loraq/format.hpp"
#include "loraq/isa.hpp"

namespace loraq::runtime {

inline constexpr int kChunk = 32;  // values of one exact int32 partial sum
inline constexpr int kPanel = 8;   // output rows of a panel: the int32 lanes of an AVX2 register
inline constexpr int kMaxPanels = 2;  // panels of one micro-kernel call (2: the 16 lanes of AVX-512)
inline constexpr int kMaxTile = 12;   // tokens of one micro-kernel call (the AVX-512 set's tile)
inline constexpr int kTokenGroup = kMaxTile;  // every set's tile divides it, so no tile spans two groups
// Strides in a pair of panels: between a panel's consecutive 32-byte vectors, between its chunks (4-
// and 8-bit codes), and between its chunks' 8 scales.
inline constexpr int kPairVector = kMaxPanels * 32;
inline constexpr int kPairChunk4 = 4 * kPairVector, kPairChunk8 = 8 * kPairVector;
inline constexpr int kPairScales = kMaxPanels * kPanel;

struct WeightPanels {
  int bits = 0;  // 4 or 8
  std::int64_t rows = 0, cols = 0, chunks = 0, panels = 0;
  std::vector<std::uint8_t> codes;  // pairs x chunks x kMaxPanels x chunk_bytes()
  std::vector<float> scales;        // pairs x chunks x kPairScales
  std::int64_t pairs() const { return (panels + kMaxPanels - 1) / kMaxPanels; }
  std::int64_t chunk_bytes() const { return bits == 4 ? 128 : 256; }  // one panel's
  // Where panel p's first code and first scale are (its partner's sit beside them).
  std::int64_t code_offset(std::int64_t p) const {
    return (p / kMaxPanels) * chunks * kMaxPanels * chunk_bytes() + (p % kMaxPanels) * 32;
  }
  std::int64_t scale_offset(std::int64_t p) const {
    return (p / kMaxPanels) * chunks * kPairScales + (p % kMaxPanels) * kPanel;
  }
  const std::uint8_t* panel_codes(std::int64_t p) const { return codes.data() + code_offset(p); }
  const float* panel_scales(std::int64_t p) const { return scales.data() + scale_offset(p); }
};

// sint4, mxint4, mxint8 and int8_channel: value = integer code x scale.
bool integer_format(Format f);

// Repacks an integer-format PackedMatrix (sint4, mxint4, mxint8, int8_channel).
WeightPanels make_panels(const PackedMatrix& packed);

// The same codes and scales in plain row-major form, the CUDA kernels' layout: int8 codes
// [rows, chunks * kChunk] (zero past cols) and one fp32 scale per (row, chunk), value = code x scale.
struct DecodedRows {
  std::int64_t rows = 0, cols = 0, chunks = 0;
  std::vector<std::int8_t> codes;
  std::vector<float> scales;
};
DecodedRows decode_rows(const PackedMatrix& packed);

// Token t's chunk c is at group g = t / kTokenGroup, i = t % kTokenGroup: codes at
// ((g * chunks + c) * kTokenGroup + i) * kChunk, its scale and offsets at (g * chunks + c) *
// kTokenGroup + i. The last group is padded with zero codes, scales and offsets.
struct ActivationRows {
  std::int64_t rows = 0, chunks = 0;
  std::vector<std::int8_t> codes;    // groups x chunks x kTokenGroup x kChunk, zero past the last column
  std::vector<float> scales;         // groups x chunks x kTokenGroup
  std::vector<std::int32_t> offset4;  // -8 x the sum of the chunk's codes
  std::vector<std::int32_t> offset8;  // -128 x the sum of the chunk's codes
};

// Quantizes x [rows, cols] to `format` with the library's codec (so the codes are those of
// fake_quantize, bit for bit) and lays them out for the kernels. One thread.
void quantize_activations(Format format, const float* x, std::int64_t rows, std::int64_t cols, ActivationRows& out);

// One tile of up to kMaxTile tokens of an ActivationRows, within one group: token t's chunk c has its
// codes at codes + c * code_chunk_stride + t * kChunk, its scale at scales[c * chunk_stride + t]
// (offsets likewise).
struct ActivationTile {
  const std::int8_t* codes;
  const float* scales;
  const std::int32_t* offset4;
  const std::int32_t* offset8;
  std::int64_t code_chunk_stride, chunk_stride;
};

// The tile of `rows` starting at token t0 (a tile never crosses a group: t0 is a multiple of the
// set's tile, which divides kTokenGroup).
inline ActivationTile tile_at(const ActivationRows& rows, std::int64_t t0) {
  const std::int64_t first = (t0 / kTokenGroup) * rows.chunks * kTokenGroup + t0 % kTokenGroup;
  return {rows.codes.data() + first * kChunk, rows.scales.data() + first, rows.offset4.data() + first,
          rows.offset8.data() + first, kTokenGroup * kChunk, kTokenGroup};
}

// A kernel set computes `panels` consecutive panels (rows = panels x kPanel output rows) for up to
// `tile` tokens per call; its results are laid out [token][rows].
//
// acc[t * rows + r] = sum over chunks c of float(int32 dot of token t and row r over chunk c)
// x (activation scale x weight scale), accumulated in chunk order with fused multiply-adds from 0,
// for the rows of a panel and the next panels - 1 ones: codes and scales point at the first panel's
// (WeightPanels::panel_codes / panel_scales; a two-panel call starts at an even panel, whose partner
// is interleaved with it). Raw pointers only: the vector kernels must not instantiate inline
// library code (src/core/simd/README.md, "Linkage rule").
using PanelKernel = void (*)(const std::uint8_t* codes, const float* scales, std::int64_t chunks,
                             const ActivationTile& a, int tokens, float* acc);
// out[t * out_stride + r] = (even + odd) + bias[r], where even starts at acc[t * rows + r] and odd at 0,
// and T(t, j) * up(r, j) goes into even (j even) or odd (j odd) with fused multiply-adds in j order.
// T(t, j) = t_rows[j * t_stride + t] (the intermediate is stored term-major within each group of
// kTokenGroup tokens, so a tile's tokens are at constant offsets from one pointer per term), and
// up(r, j) = up[j * up_stride + r]. out_stride lets a whole panel's results go straight into the
// layer's output rows (stride: its width); a trailing partial panel goes through a buffer of
// stride rows.
using EpilogueKernel = void (*)(const float* acc, const float* t_rows, std::int64_t t_stride, const float* up,
                                std::int64_t up_stride, std::int64_t rank, const float* bias, int tokens, float* out,
                                std::int64_t out_stride);

// The up-projection [out, rank] as the epilogues read it: groups of kMaxPanels panels, each group
// [rank][kMaxPanels * kPanel] (zero rows past out), so panel p starts at rows_of(p) with
// up_stride = kMaxPanels * kPanel whatever the kernel set.
struct UpProjection {
  std::int64_t rank = 0;
  std::vector<float> values;
  static constexpr std::int64_t stride = kMaxPanels * kPanel;
  UpProjection() = default;
  UpProjection(const std::vector<float>& up, std::int64_t out, std::int64_t rank);  // up: [out, rank] row-major
  const float* rows_of(std::int64_t p) const {
    return values.data() + (p / kMaxPanels) * rank * stride + (p % kMaxPanels) * kPanel;
  }
};

struct KernelSet {
  const char* name;  // what describe() reports
  int panels;        // panels per call, 1 .. kMaxPanels
  int tile;          // tokens per call, 1 .. kMaxTile
  PanelKernel w4;
  PanelKernel w8;
  EpilogueKernel epilogue;
  const KernelSet* narrow;  // a one-panel set with the same bits, for a trailing odd panel (or this)
  int rows() const { return panels * kPanel; }
};

const KernelSet& scalar_kernels();
// Each only called once the CPU is known to have what it needs.
const KernelSet& avx2_kernels();      // AVX2 + FMA
const KernelSet& avx_vnni_kernels();  // AVX2 + FMA + AVX-VNNI
const KernelSet& avx512_kernels();    // AVX-512 F/BW/DQ/VL + AVX512_VNNI
// The set for `isa`: for avx512, the AVX-512 VNNI set where the CPU has AVX512_VNNI; for avx2 (and
// avx512 without AVX512_VNNI), the AVX-VNNI set where the CPU has AVX-VNNI, else the AVX2 one.
const KernelSet& kernels_for(Isa isa);
// Every set this CPU can run, scalar first (for tests and benchmarks).
std::vector<const KernelSet*> available_kernel_sets();
// The set a layer runs when no instruction set is asked for: kernels_for(default_isa()), unless the
// environment variable LORAQ_KERNELS names another set (scalar, avx2, avx-vnni, avx512-vnni: for
// benchmarks); one this CPU cannot run throws Error.
const KernelSet& default_kernels();

}  // namespace loraq::runtime
