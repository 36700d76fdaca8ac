// Layer selection: the presets (diffusers tensor names), glob matching, and select_layers.
//
// The presets follow what SVDQuant quantizes: the linear layers inside the transformer blocks
// (attention projections and MLPs). Embedders, the adaLN modulation, the caption projection, the
// final projection, norms, biases and tables stay in 16 bits: they are small and sensitive.
#include <array>
#include <string>

#include "loraq/error.hpp"
#include "loraq/layers.hpp"

namespace loraq {
namespace {

// Patterns are anchored at both ends and '*' crosses dots, so every pattern spells out the block
// prefix and the whole tail after the block index: "transformer_blocks.*.attn1.to_q.weight" cannot
// select a bias, a norm, or a tensor of single_transformer_blocks (tests/cpp/test_layers.cpp checks
// these against full name lists).
constexpr std::array<std::string_view, 10> kPixartInclude = {
    "transformer_blocks.*.attn1.to_q.weight",     "transformer_blocks.*.attn1.to_k.weight",
    "transformer_blocks.*.attn1.to_v.weight",     "transformer_blocks.*.attn1.to_out.0.weight",
    "transformer_blocks.*.attn2.to_q.weight",     "transformer_blocks.*.attn2.to_k.weight",
    "transformer_blocks.*.attn2.to_v.weight",     "transformer_blocks.*.attn2.to_out.0.weight",
    "transformer_blocks.*.ff.net.0.proj.weight",  "transformer_blocks.*.ff.net.2.weight",
};

// SANA's feed-forward is GLUMBConv: 1x1 convolutions (conv_inverted, conv_point) around a
// depthwise 3x3 (conv_depth). The pointwise ones are linear layers over channels; the depthwise one
// is not a matmul and stays in 16 bits.
constexpr std::array<std::string_view, 10> kSanaInclude = {
    "transformer_blocks.*.attn1.to_q.weight",        "transformer_blocks.*.attn1.to_k.weight",
    "transformer_blocks.*.attn1.to_v.weight",        "transformer_blocks.*.attn1.to_out.0.weight",
    "transformer_blocks.*.attn2.to_q.weight",        "transformer_blocks.*.attn2.to_k.weight",
    "transformer_blocks.*.attn2.to_v.weight",        "transformer_blocks.*.attn2.to_out.0.weight",
    "transformer_blocks.*.ff.conv_inverted.weight",  "transformer_blocks.*.ff.conv_point.weight",
};

// FLUX.1: double-stream blocks (image and text streams, joint attention) and single-stream blocks
// (fused attention + MLP input, one output projection).
constexpr std::array<std::string_view, 17> kFluxInclude = {
    "transformer_blocks.*.attn.to_q.weight",
    "transformer_blocks.*.attn.to_k.weight",
    "transformer_blocks.*.attn.to_v.weight",
    "transformer_blocks.*.attn.add_q_proj.weight",
    "transformer_blocks.*.attn.add_k_proj.weight",
    "transformer_blocks.*.attn.add_v_proj.weight",
    "transformer_blocks.*.attn.to_out.0.weight",
    "transformer_blocks.*.attn.to_add_out.weight",
    "transformer_blocks.*.ff.net.0.proj.weight",
    "transformer_blocks.*.ff.net.2.weight",
    "transformer_blocks.*.ff_context.net.0.proj.weight",
    "transformer_blocks.*.ff_context.net.2.weight",
    "single_transformer_blocks.*.attn.to_q.weight",
    "single_transformer_blocks.*.attn.to_k.weight",
    "single_transformer_blocks.*.attn.to_v.weight",
    "single_transformer_blocks.*.proj_mlp.weight",
    "single_transformer_blocks.*.proj_out.weight",
};

constexpr std::array<std::string_view, 1> kGenericInclude = {"*.weight"};
constexpr std::array<std::string_view, 2> kGenericExclude = {"*embed*", "*norm*"};

constexpr std::array<LayerPreset, 5> kPresets = {{
    {"pixart-sigma",
     "PixArt-Sigma: attn1/attn2 to_q, to_k, to_v, to_out.0 and ff.net.0.proj, ff.net.2 of every "
     "transformer block (10 per block); embedders, adaln_single, caption_projection, proj_out, "
     "norms, biases and scale_shift_table stay in 16 bits",
     kPixartInclude, {}, false},
    {"sana",
     "SANA: attn1/attn2 to_q, to_k, to_v, to_out.0 and the GLUMBConv pointwise convolutions "
     "ff.conv_inverted, ff.conv_point ([out, in, 1, 1]) of every transformer block; the depthwise "
     "ff.conv_depth and everything outside the blocks stay in 16 bits",
     kSanaInclude, {}, false},
    {"flux",
     "FLUX.1: double-stream attention (to_q/k/v, add_q/k/v_proj, to_out.0, to_add_out) and MLPs "
     "(ff, ff_context), single-stream attn.to_q/k/v, proj_mlp, proj_out; adaLN modulations "
     "(norm*.linear), embedders and the final proj_out stay in 16 bits",
     kFluxInclude, {}, false},
    {"generic",
     "every floating-point linear weight (2-D, or a [out, in, 1, 1] pointwise convolution) whose "
     "name ends in '.weight', except names containing 'embed' (embedders) or 'norm' (norms and "
     "adaLN modulations); tensors of other shapes are passed over",
     kGenericInclude, kGenericExclude, true},
    {"none", "nothing: the recipe's layers.include patterns alone choose the layers", {}, {}, false},
}};

// One non-'*' token of the pattern at `p` (a literal, '?' or a class) against the character c.
// Sets `length` to the token's length in the pattern. A '[' without a closing ']' is a literal.
bool token_matches(std::string_view pattern, std::size_t p, char c, std::size_t& length) {
  const char t = pattern[p];
  length = 1;
  if (t == '?') return true;
  if (t != '[') return t == c;
  std::size_t i = p + 1;
  bool negate = false;
  if (i < pattern.size() && (pattern[i] == '!' || pattern[i] == '^')) {
    negate = true;
    ++i;
  }
  const auto uc = static_cast<unsigned char>(c);
  bool matched = false;
  bool first = true;  // a ']' right after '[' or '[!' is a member, as in POSIX shells
  while (true) {
    if (i >= pattern.size()) return c == '[';  // unterminated: '[' stands for itself
    if (pattern[i] == ']' && !first) break;
    const auto lo = static_cast<unsigned char>(pattern[i]);
    if (i + 2 < pattern.size() && pattern[i + 1] == '-' && pattern[i + 2] != ']') {
      const auto hi = static_cast<unsigned char>(pattern[i + 2]);
      matched = matched || (lo <= uc && uc <= hi);
      i += 3;
    } else {
      matched = matched || lo == uc;
      ++i;
    }
    first = false;
  }
  length = i + 1 - p;
  return matched != negate;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// The first pattern that matches `name`, or nullptr.
const std::string_view* first_match(std::span<const std::string_view> patterns, std::string_view name) {
  for (const std::string_view& pattern : patterns)
    if (glob_match(pattern, name)) return &pattern;
  return nullptr;
}
const std::string* first_match(const std::vector<std::string>& patterns, std::string_view name) {
  for (const std::string& pattern : patterns)
    if (glob_match(pattern, name)) return &pattern;
  return nullptr;
}

}  // namespace

std::span<const LayerPreset> all_layer_presets() { return kPresets; }

const LayerPreset& layer_preset(std::string_view name) {
  std::string known;
  for (const LayerPreset& preset : kPresets) {
    if (preset.name == name) return preset;
    known += (known.empty() ? "" : ", ") + std::string(preset.name);
  }
  throw Error("unknown layer preset '" + std::string(name) + "': expected one of " + known);
}

// Iterative matching with one saved position: on a mismatch, the last '*' seen absorbs one more
// character and matching resumes after it. Earlier stars never need revisiting (whatever they
// matched, the last star can absorb the difference), so the cost is O(pattern x name) at worst and
// linear for ordinary patterns; nothing recurses.
bool glob_match(std::string_view pattern, std::string_view name) {
  constexpr std::size_t none = std::string_view::npos;
  std::size_t p = 0, n = 0, star = none, star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
      continue;
    }
    std::size_t length = 0;
    if (p < pattern.size() && token_matches(pattern, p, name[n], length)) {
      p += length;
      ++n;
      continue;
    }
    if (star == none) return false;
    p = star + 1;
    n = ++star_n;
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool is_linear_weight_shape(std::span<const std::int64_t> shape) {
  return shape.size() == 2 || (shape.size() == 4 && shape[2] == 1 && shape[3] == 1);
}

std::vector<std::string> select_layers(std::span<const TensorShape> tensors, const LayerSelection& selection) {
  const LayerPreset& preset = layer_preset(selection.preset);
  std::vector<std::string> selected;
  for (const TensorShape& tensor : tensors) {
    const std::string_view* preset_pattern = first_match(preset.include, tensor.name);
    const std::string* user_pattern = first_match(selection.include, tensor.name);
    if (!preset_pattern && !user_pattern) continue;
    // Excludes win over includes, so an exclude is also how a recipe drops a tensor that an include
    // would otherwise reject for its shape.
    if (first_match(preset.exclude, tensor.name) || first_match(selection.exclude, tensor.name)) continue;
    if (!tensor.is_float) continue;
    if (!is_linear_weight_shape(tensor.shape)) {
      // A preset that filters by shape passes over what it cannot quantize; a pattern that names
      // specific tensors (the user's, or a model preset's) and hits a non-linear one means the
      // pattern or the checkpoint is not what the recipe expects.
      if (!user_pattern && preset.skip_other_shapes) continue;
      const std::string pattern = user_pattern ? *user_pattern : std::string(*preset_pattern);
      throw Error("tensor '" + tensor.name + "' has shape " + shape_text(tensor.shape) + ": include pattern '" +
                  pattern + "'" + (user_pattern ? "" : " of preset '" + std::string(preset.name) + "'") +
                  " selects it, but only 2-D weights and [out, in, 1, 1] pointwise convolutions are "
                  "linear layers (add it to layers.exclude)");
    }
    selected.push_back(tensor.name);
  }
  return selected;
}

}  // namespace loraq
