// loraq-make-model: writes a synthetic checkpoint with a real architecture's tensor names and shapes
// (PixArt-Sigma, diffusers' PixArtTransformer2DModel, at any width and depth; SANA,
// SanaTransformer2DModel, at any width and depth (default: the 1.6 B model's 2240 x 20); or FLUX.1,
// FluxTransformer2DModel, at its real width with any number of blocks: the 12 B-parameter
// checkpoint of the memory test). It is the default model of
// the README's main command until a trained one ships, and the input of tests and benchmarks.
// Values are deterministic (seeded, our own generator: the same bytes on every machine) and shaped
// like trained weights where it matters for quantization: Laplace tails, outlier input channels,
// rows of different scale.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dit_weights.hpp"
#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "dit_weights.hpp"
#include "loraq/io.hpp"

namespace {

struct Arch {
  int hidden = 1152, blocks = 28, mlp_ratio = 4, caption_channels = 4096, in_channels = 4, out_channels = 8, patch = 2;
};

std::vector<loraq::io::TensorSpec> pixart_sigma_tensors(const Arch& a, loraq::io::DType dtype) {
  const std::int64_t h = a.hidden, mlp = std::int64_t(a.mlp_ratio) * h;
  std::vector<loraq::io::TensorSpec> t;
  auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in) {
    t.push_back({name + ".weight", dtype, {out, in}});
    t.push_back({name + ".bias", dtype, {out}});
  };
  t.push_back({"pos_embed.proj.weight", dtype, {h, a.in_channels, a.patch, a.patch}});
  t.push_back({"pos_embed.proj.bias", dtype, {h}});
  linear("adaln_single.emb.timestep_embedder.linear_1", h, 256);
  linear("adaln_single.emb.timestep_embedder.linear_2", h, h);
  linear("adaln_single.linear", 6 * h, h);
  linear("caption_projection.linear_1", h, a.caption_channels);
  linear("caption_projection.linear_2", h, h);
  for (int b = 0; b < a.blocks; ++b) {
    const std::string p = fmt::format("transformer_blocks.{}.", b);
    t.push_back({p + "scale_shift_table", dtype, {6, h}});
    for (const char* attn : {"attn1", "attn2"})
      for (const char* proj : {"to_q", "to_k", "to_v", "to_out.0"}) linear(p + attn + "." + proj, h, h);
    linear(p + "ff.net.0.proj", mlp, h);
    linear(p + "ff.net.2", h, mlp);
  }
  linear("proj_out", std::int64_t(a.patch) * a.patch * a.out_channels, h);
  t.push_back({"scale_shift_table", dtype, {2, h}});
  return t;
}

// SANA (Sana_1600M: hidden 2240 = 70 heads x 32, 20 blocks, Gemma-2 captions of width 2304,
// patch 1, 32 latent channels): linear attention and cross-attention, and GLUMBConv feed-forwards
// (1x1 conv_inverted to 2 x 2.5 x hidden, a depthwise 3x3, a 1x1 conv_point back), as diffusers
// names them.
std::vector<loraq::io::TensorSpec> sana_tensors(const Arch& a, loraq::io::DType dtype) {
  const std::int64_t h = a.hidden, mlp = h * 5 / 2, latent = 32, caption = 2304;
  std::vector<loraq::io::TensorSpec> t;
  auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in, bool bias = true) {
    t.push_back({name + ".weight", dtype, {out, in}});
    if (bias) t.push_back({name + ".bias", dtype, {out}});
  };
  auto conv = [&](const std::string& name, std::vector<std::int64_t> shape) {
    const std::int64_t out = shape[0];
    t.push_back({name + ".weight", dtype, std::move(shape)});
    t.push_back({name + ".bias", dtype, {out}});
  };
  conv("patch_embed.proj", {h, latent, 1, 1});
  linear("time_embed.emb.timestep_embedder.linear_1", h, 256);
  linear("time_embed.emb.timestep_embedder.linear_2", h, h);
  linear("time_embed.linear", 6 * h, h);
  linear("caption_projection.linear_1", h, caption);
  linear("caption_projection.linear_2", h, h);
  t.push_back({"caption_norm.weight", dtype, {h}});
  for (int b = 0; b < a.blocks; ++b) {
    const std::string p = fmt::format("transformer_blocks.{}.", b);
    t.push_back({p + "scale_shift_table", dtype, {6, h}});
    for (const char* proj : {"to_q", "to_k", "to_v"}) linear(p + "attn1." + proj, h, h, false);
    linear(p + "attn1.to_out.0", h, h);
    for (const char* proj : {"to_q", "to_k", "to_v", "to_out.0"}) linear(p + "attn2." + proj, h, h);
    conv(p + "ff.conv_inverted", {2 * mlp, h, 1, 1});
    conv(p + "ff.conv_depth", {2 * mlp, 1, 3, 3});
    t.push_back({p + "ff.conv_point.weight", dtype, {h, mlp, 1, 1}});
  }
  t.push_back({"scale_shift_table", dtype, {2, h}});
  linear("proj_out", latent, h);
  return t;
}

// FLUX.1-dev: hidden 3072 (24 heads x 128), `blocks` double-stream blocks (real: 19) and
// `single_blocks` single-stream blocks (real: 38), as diffusers names them.
std::vector<loraq::io::TensorSpec> flux_tensors(int blocks, int single_blocks, loraq::io::DType dtype) {
  const std::int64_t h = 3072, head = 128, mlp = 4 * h;
  std::vector<loraq::io::TensorSpec> t;
  auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in) {
    t.push_back({name + ".weight", dtype, {out, in}});
    t.push_back({name + ".bias", dtype, {out}});
  };
  for (const char* embedder : {"timestep_embedder", "guidance_embedder"}) {
    linear(std::string("time_text_embed.") + embedder + ".linear_1", h, 256);
    linear(std::string("time_text_embed.") + embedder + ".linear_2", h, h);
  }
  linear("time_text_embed.text_embedder.linear_1", h, 768);
  linear("time_text_embed.text_embedder.linear_2", h, h);
  linear("context_embedder", h, 4096);
  linear("x_embedder", h, 64);
  for (int b = 0; b < blocks; ++b) {
    const std::string p = fmt::format("transformer_blocks.{}.", b);
    linear(p + "norm1.linear", 6 * h, h);
    linear(p + "norm1_context.linear", 6 * h, h);
    for (const char* norm : {"norm_q", "norm_k", "norm_added_q", "norm_added_k"})
      t.push_back({p + "attn." + norm + ".weight", dtype, {head}});
    for (const char* proj : {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"})
      linear(p + "attn." + proj, h, h);
    for (const char* ff : {"ff", "ff_context"}) {
      linear(p + ff + ".net.0.proj", mlp, h);
      linear(p + ff + ".net.2", h, mlp);
    }
  }
  for (int b = 0; b < single_blocks; ++b) {
    const std::string p = fmt::format("single_transformer_blocks.{}.", b);
    linear(p + "norm.linear", 3 * h, h);
    linear(p + "proj_mlp", mlp, h);
    linear(p + "proj_out", h, h + mlp);
    for (const char* norm : {"norm_q", "norm_k"}) t.push_back({p + "attn." + norm + ".weight", dtype, {head}});
    for (const char* proj : {"to_q", "to_k", "to_v"}) linear(p + "attn." + proj, h, h);
  }
  linear("norm_out.linear", 2 * h, h);
  linear("proj_out", 64, h);
  return t;
}

std::uint64_t name_seed(const std::string& name, std::uint64_t seed) {
  std::uint64_t hash = 1469598103934665603ull ^ seed;  // FNV-1a: each tensor's values depend on its name only
  for (unsigned char c : name) hash = (hash ^ c) * 1099511628211ull;
  return hash;
}

std::vector<float> values_of(const loraq::io::TensorSpec& spec, std::uint64_t seed) {
  std::uint64_t count = 1;
  for (std::int64_t d : spec.shape) count *= std::uint64_t(d);
  std::vector<float> v(count);
  const std::uint64_t tensor_seed = name_seed(spec.name, seed);
  const bool weight = spec.shape.size() >= 2 && spec.name.ends_with(".weight");
  if (weight) {  // the statistics of trained DiT layers, as the tests and benchmarks see them
    const std::int64_t rows = spec.shape[0];
    return loraq::testing::dit_weight(rows, std::int64_t(count) / rows, tensor_seed);
  }
  loraq::testing::SplitMix64 rng{tensor_seed};
  for (float& x : v) x = float(0.02 * rng.normal());  // biases, tables: small values
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Write a synthetic PixArt-Sigma-, SANA- or FLUX-shaped checkpoint (diffusers names) for tests, benchmarks and "
               "demos"};
  Arch arch;
  std::string output, dtype_name = "BF16";
  std::uint64_t seed = 0;
  double max_shard_gb = 5.0;
  std::string architecture = "pixart-sigma";
  int single_blocks = 38;
  app.add_option("--arch", architecture, "pixart-sigma (any width), sana (any width; default the 1.6 B model's) or "
                                         "flux (width 3072)")
      ->transform(CLI::IsMember({"pixart-sigma", "sana", "flux"}))
      ->capture_default_str();
  app.add_option("--single-blocks", single_blocks, "FLUX single-stream blocks (FLUX.1: 38; --blocks: double-stream, 19)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("-o,--output", output, "Output folder (diffusers layout) or .safetensors file")->required();
  app.add_option("--hidden", arch.hidden, "Hidden width (PixArt-Sigma: 1152)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--blocks", arch.blocks, "Transformer blocks (PixArt-Sigma: 28; FLUX double-stream: 19)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--caption-channels", arch.caption_channels, "Text encoder width (T5-XXL: 4096)")->capture_default_str();
  app.add_option("--dtype", dtype_name, "F32, F16 or BF16")->transform(CLI::IsMember({"F32", "F16", "BF16"}, CLI::ignore_case))->capture_default_str();
  app.add_option("--seed", seed, "Seed")->capture_default_str();
  app.add_option("--max-shard-gb", max_shard_gb, "Largest shard in GB")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const loraq::io::DType dtype = loraq::io::parse_dtype(dtype_name);
    const bool flux = architecture == "flux", sana = architecture == "sana";
    if (flux && app.count("--blocks") == 0) arch.blocks = 19;  // FLUX.1's double-stream blocks
    if (sana && app.count("--blocks") == 0) arch.blocks = 20;  // Sana_1600M
    if (sana && app.count("--hidden") == 0) arch.hidden = 2240;
    const std::vector<loraq::io::TensorSpec> specs = flux   ? flux_tensors(arch.blocks, single_blocks, dtype)
                                                     : sana ? sana_tensors(arch, dtype)
                                                            : pixart_sigma_tensors(arch, dtype);
    loraq::io::CheckpointWriter writer(output, specs, {{"generator", "loraq-make-model"}, {"seed", std::to_string(seed)}},
                                       {static_cast<std::uint64_t>(max_shard_gb * 1e9), "diffusion_pytorch_model"});
    for (const loraq::io::TensorSpec& spec : writer.order()) {
      const std::vector<float> v = values_of(spec, seed);
      std::vector<std::byte> bytes(v.size() * loraq::io::dtype_size(dtype));
      loraq::io::from_float32(dtype, v, bytes);
      writer.write(spec.name, bytes);
    }
    writer.finish();
    if (!output.ends_with(".safetensors")) {
      const nlohmann::ordered_json config = sana ? nlohmann::ordered_json{
          {"_class_name", "SanaTransformer2DModel"}, {"_loraq_synthetic", true}, {"in_channels", 32},
          {"out_channels", 32}, {"num_layers", arch.blocks},
          {"num_attention_heads", arch.hidden % 32 == 0 ? arch.hidden / 32 : 1},
          {"attention_head_dim", arch.hidden % 32 == 0 ? 32 : arch.hidden},
          {"num_cross_attention_heads", arch.hidden % 112 == 0 ? arch.hidden / 112 : arch.hidden % 32 == 0 ? arch.hidden / 32 : 1},
          {"cross_attention_head_dim", arch.hidden % 112 == 0 ? 112 : arch.hidden % 32 == 0 ? 32 : arch.hidden},
          {"cross_attention_dim", arch.hidden},
          {"caption_channels", 2304}, {"mlp_ratio", 2.5}, {"patch_size", 1}, {"sample_size", 32}}
          : flux ? nlohmann::ordered_json{
          {"_class_name", "FluxTransformer2DModel"}, {"_loraq_synthetic", true}, {"patch_size", 1},
          {"in_channels", 64}, {"num_layers", arch.blocks}, {"num_single_layers", single_blocks},
          {"attention_head_dim", 128}, {"num_attention_heads", 24}, {"joint_attention_dim", 4096},
          {"pooled_projection_dim", 768}, {"guidance_embeds", true}, {"axes_dims_rope", {16, 56, 56}}}
          : nlohmann::ordered_json{
          {"_class_name", "PixArtTransformer2DModel"}, {"_loraq_synthetic", true},
          {"num_attention_heads", arch.hidden % 72 == 0 ? arch.hidden / 72 : 1},
          {"attention_head_dim", arch.hidden % 72 == 0 ? 72 : arch.hidden},
          {"in_channels", arch.in_channels}, {"out_channels", arch.out_channels}, {"num_layers", arch.blocks},
          {"cross_attention_dim", arch.hidden}, {"caption_channels", arch.caption_channels},
          {"patch_size", arch.patch}, {"sample_size", 128}, {"norm_type", "ada_norm_single"},
          {"use_additional_conditions", false}};
      std::FILE* f = std::fopen((output + "/config.json").c_str(), "wb");
      if (!f) throw loraq::Error(output + "/config.json: cannot write");
      const std::string text = config.dump(2) + "\n";
      std::fwrite(text.data(), 1, text.size(), f);
      std::fclose(f);
    }
    std::printf("wrote %s (%zu tensors)\n", output.c_str(), specs.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loraq-make-model: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
