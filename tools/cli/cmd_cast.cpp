// `loraq cast`: fake-quantize every float tensor of a .npy or .safetensors file along its last axis,
// so that anyone can check a format from outside the code (ml_dtypes, torchao, their own script).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "loraq/format.hpp"
#include "loraq/io.hpp"

namespace loraq::cli {
namespace {

namespace fs = std::filesystem;

struct CastOptions {
  std::string format;
  std::string element;
  std::string rounding = "ties-even";
  std::string in;
  std::string out;
  std::string out_dtype = "same";
  std::string isa;
  std::string codes_out;
  int threads = 0;
  bool report = false;
};

// Packed codes and scales of every cast tensor, for --codes-out (FORMATS.md "Packed storage").
struct PackedTensors {
  std::vector<std::pair<std::string, PackedMatrix>> tensors;
  std::vector<std::int64_t> logical_shape;
};

// What one cast does to a [rows, cols] float matrix.
struct Caster {
  std::optional<Format> format;
  std::optional<Element> element;
  QuantOptions options;

  void apply(std::vector<float>& values, std::int64_t rows, std::int64_t cols) const {
    if (format) return fake_quantize(*format, values, values, rows, cols, options);
    for (float& v : values) v = round_to_element(*element, v, options.rounding);
  }
};

Element parse_element(const std::string& name) {
  std::string known;
  for (const ElementInfo& e : all_elements()) {
    if (e.name == name) return e.element;
    known += (known.empty() ? "" : ", ") + std::string(e.name);
  }
  throw Error("unknown element '" + name + "': expected one of " + known);
}

Caster make_caster(const CastOptions& o) {
  if (o.format.empty() == o.element.empty()) throw Error("cast: give exactly one of --format and --element");
  Caster c;
  if (!o.format.empty()) c.format = parse_format(o.format);
  if (!o.element.empty()) c.element = parse_element(o.element);
  c.options.rounding = o.rounding == "ties-away" ? Rounding::nearest_away : Rounding::nearest_even;
  if (!o.isa.empty()) c.options.isa = parse_isa(o.isa);
  c.options.threads = o.threads;
  return c;
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
  return "[" + fmt::format("{}", fmt::join(shape, ", ")) + "]";
}

struct Matrix {
  std::int64_t rows;
  std::int64_t cols;
};

Matrix as_matrix(const std::vector<std::int64_t>& shape, std::uint64_t count) {
  const std::int64_t cols = shape.empty() ? 1 : shape.back();
  return {cols == 0 ? 0 : std::int64_t(count) / cols, cols};
}

io::DType output_dtype(const std::string& requested, io::DType input) {
  if (requested == "same") return input;
  return io::parse_dtype(requested);
}

struct ErrorStats {
  double signal = 0, noise = 0, max_abs = 0;
  void add(const std::vector<float>& original, const std::vector<float>& quantized) {
    for (std::size_t i = 0; i < original.size(); ++i) {
      const double d = double(quantized[i]) - double(original[i]);
      signal += double(original[i]) * double(original[i]);
      noise += d * d;
      max_abs = std::max(max_abs, std::fabs(d));
    }
  }
};

void print_report_header() {
  fmt::print("{:<40} {:<18} {:>12} {:>10} {:>12}\n", "tensor", "shape", "rel. error", "SQNR dB", "max |err|");
}

void print_report_row(const std::string& name, const std::vector<std::int64_t>& shape, const ErrorStats& s) {
  const double rel = s.signal > 0 ? std::sqrt(s.noise / s.signal) : 0.0;
  const double sqnr = s.noise > 0 ? 10.0 * std::log10(s.signal / s.noise) : INFINITY;
  fmt::print("{:<40} {:<18} {:>12.4e} {:>10.2f} {:>12.4e}\n", name, shape_string(shape), rel, sqnr, s.max_abs);
}

std::span<const std::byte> as_bytes(const std::vector<std::uint8_t>& v) {
  return std::as_bytes(std::span<const std::uint8_t>(v));
}

// --codes-out: per tensor "<name>.codes" [rows, packed row bytes] and "<name>.scales" [rows, scale
// bytes per row] as U8, and for nvfp4 "<name>.tensor_scale" as F32 [1]; the logical [rows, cols]
// and the format in __metadata__.
void write_codes(const std::string& path, const std::vector<std::pair<std::string, PackedMatrix>>& packed) {
  std::vector<io::TensorSpec> specs;
  std::map<std::string, std::string> metadata;
  for (const auto& [name, p] : packed) {
    specs.push_back({name + ".codes", io::DType::u8, {p.rows, packed_row_bytes(p.format, p.cols)}});
    specs.push_back({name + ".scales", io::DType::u8, {p.rows, blocks_per_row(p.format, p.cols) * scale_bytes(p.format)}});
    if (format_info(p.format).tensor_scale) specs.push_back({name + ".tensor_scale", io::DType::f32, {1}});
    metadata[name + ".shape"] = fmt::format("[{}, {}]", p.rows, p.cols);
    metadata["format"] = std::string(format_info(p.format).name);
  }
  io::SafetensorsWriter writer(path, specs, metadata);
  for (const io::TensorSpec& spec : writer.specs()) {
    const std::string base = spec.name.substr(0, spec.name.rfind('.'));
    const std::string part = spec.name.substr(spec.name.rfind('.') + 1);
    const PackedMatrix& p = std::find_if(packed.begin(), packed.end(), [&](auto& e) { return e.first == base; })->second;
    if (part == "codes") writer.write(spec.name, as_bytes(p.codes));
    else if (part == "scales") writer.write(spec.name, as_bytes(p.scales));
    else writer.write(spec.name, std::as_bytes(std::span<const float>(&p.tensor_scale, 1)));
  }
  writer.finish();
}

// Converts, checks, casts and converts back one tensor's bytes.
std::vector<std::byte> cast_tensor(const Caster& caster, io::DType in_dtype, io::DType out_dtype,
                                   std::span<const std::byte> bytes, const std::vector<std::int64_t>& shape,
                                   const std::string& file, const std::string& name, ErrorStats* stats,
                                   std::vector<std::pair<std::string, PackedMatrix>>* packed) {
  const std::uint64_t count = io::element_count(shape, name);
  std::vector<float> values(count);
  io::to_float32(in_dtype, bytes, values);
  io::require_finite(values, shape, file, name);  // a NaN or Inf would poison a whole block (FORMATS.md, MX step 2)
  const std::vector<float> original = stats ? values : std::vector<float>{};
  const Matrix m = as_matrix(shape, count);
  if (packed) packed->emplace_back(name, pack(*caster.format, values, m.rows, m.cols, caster.options));
  caster.apply(values, m.rows, m.cols);
  if (stats) stats->add(original, values);
  std::vector<std::byte> out(count * io::dtype_size(out_dtype));
  io::from_float32(out_dtype, values, out);
  return out;
}

int cast_npy(const Caster& caster, const CastOptions& o) {
  for (const std::string& out : {o.out, o.codes_out})
    if (io::same_file(o.in, out))
      throw Error(out + ": cast: this is the input " + o.in + ", which writing the output there would replace; choose "
                  "another path");
  const io::NpyArray in = io::read_npy(o.in);
  const io::DType out_dtype = output_dtype(o.out_dtype, in.dtype);
  ErrorStats stats;
  io::NpyArray out{out_dtype, in.shape, {}};
  std::vector<std::pair<std::string, PackedMatrix>> packed;
  out.data = cast_tensor(caster, in.dtype, out_dtype, in.data, in.shape, o.in, "array", o.report ? &stats : nullptr,
                         o.codes_out.empty() ? nullptr : &packed);
  if (!o.codes_out.empty()) write_codes(o.codes_out, packed);
  io::write_npy(o.out, out);
  if (o.report) {
    print_report_header();
    print_report_row("array", in.shape, stats);
  }
  return 0;
}

// A safetensors file, a shard index or a diffusers folder in; one file or a (sharded) folder out.
int cast_checkpoint(const Caster& caster, const CastOptions& o) {
  const io::Checkpoint in(o.in);
  io::refuse_output_over_input(in, o.out, "cast");
  if (!o.codes_out.empty()) io::refuse_output_over_input(in, o.codes_out, "cast --codes-out");
  std::vector<io::TensorSpec> specs;
  for (const io::TensorInfo& t : in.tensors())
    specs.push_back({t.name, io::is_float_dtype(t.dtype) ? output_dtype(o.out_dtype, t.dtype) : t.dtype, t.shape});
  auto metadata = in.metadata();
  metadata["loraq.cast"] = caster.format ? std::string(format_info(*caster.format).name)
                                         : "element " + std::string(element_info(*caster.element).name);
  metadata["loraq.rounding"] = o.rounding;
  io::CheckpointWriter writer(o.out, specs, metadata);
  if (o.report) print_report_header();
  ErrorStats total;
  std::vector<std::int64_t> total_shape = {0};
  std::vector<std::pair<std::string, PackedMatrix>> packed;
  for (const io::TensorSpec& spec : writer.order()) {
    const io::TensorInfo& t = in.info(spec.name);
    if (!io::is_float_dtype(t.dtype)) {  // integer and boolean tensors are not weights: copied as they are
      writer.write(t.name, in.bytes(t.name));
      continue;
    }
    ErrorStats stats;
    writer.write(t.name, cast_tensor(caster, t.dtype, spec.dtype, in.bytes(t.name), t.shape, in.file_of(t.name).string(), t.name,
                                     o.report ? &stats : nullptr, o.codes_out.empty() ? nullptr : &packed));
    if (o.report) {
      print_report_row(t.name, t.shape, stats);
      total.signal += stats.signal, total.noise += stats.noise, total.max_abs = std::max(total.max_abs, stats.max_abs);
      total_shape[0] += std::int64_t(io::element_count(t.shape, t.name));
    }
  }
  if (o.report) print_report_row("(all float tensors)", total_shape, total);
  if (!o.codes_out.empty()) write_codes(o.codes_out, packed);
  writer.finish();
  return 0;
}

}  // namespace

Command add_cast_command(CLI::App& app) {
  auto o = std::make_shared<CastOptions>();
  CLI::App* cmd = app.add_subcommand(
      "cast", "Fake-quantize every float tensor of a .npy file or a safetensors checkpoint along its last axis");
  cmd->add_option("--format", o->format, "Block format (see `loraq formats`)");
  cmd->add_option("--element", o->element, "Round each value to an element encoding instead (e2m1, e4m3, ...)");
  cmd->add_option("--rounding", o->rounding, "Ties rounding")
      ->check(CLI::IsMember({"ties-even", "ties-away"}))
      ->capture_default_str();
  cmd->add_option("--in", o->in, "Input: .npy (float32, float16, bfloat16), or a .safetensors file, shard index or "
                                 "diffusers folder")->required();
  cmd->add_option("--out", o->out, "Output: .npy for a .npy input; else a .safetensors file or a folder (sharded as "
                                   "diffusers does). Written to temporary names, then renamed")
      ->required();
  cmd->add_option("--out-dtype", o->out_dtype, "Output dtype of float tensors: same, F32, F16 or BF16")
      ->transform(CLI::IsMember({"same", "F32", "F16", "BF16"}, CLI::ignore_case))
      ->capture_default_str();
  cmd->add_option("--isa", o->isa, "Force a code path: scalar, avx2 or avx512 (default: the best this CPU has)");
  cmd->add_option("--threads", o->threads, "Threads (default: all cores); results never depend on it")
      ->check(kNonNegative);
  cmd->add_flag("--report", o->report, "Print per-tensor relative error, SQNR and max error");
  cmd->add_option("--codes-out", o->codes_out,
                  "Also write the packed codes and scales (safetensors: <name>.codes, <name>.scales) "
                  "in the byte layout of docs/formats.md; needs --format");
  return {cmd, [o] {
            const Caster caster = make_caster(*o);
            const auto kind = [](const std::string& path) { return fs::path(path).extension().string(); };
            const bool npy = kind(o->in) == ".npy";
            if (!npy && !fs::is_directory(o->in) && kind(o->in) != ".safetensors" && !o->in.ends_with(".index.json"))
              throw Error(o->in + ": unknown file type '" + kind(o->in) +
                          "': expected .npy, .safetensors, a shard index (.index.json) or a folder");
            if (!o->codes_out.empty() && !caster.format) throw Error("cast: --codes-out needs --format");
            if (!o->codes_out.empty() && kind(o->codes_out) != ".safetensors")
              throw Error(o->codes_out + ": --codes-out writes a .safetensors file");
            if (npy != (kind(o->out) == ".npy"))
              throw Error(o->out + ": the output of a " + (npy ? ".npy input is a .npy file" : "checkpoint is a "
                          ".safetensors file or a folder") + " (input " + o->in + ")");
            return npy ? cast_npy(caster, *o) : cast_checkpoint(caster, *o);
          }};
}

}  // namespace loraq::cli
