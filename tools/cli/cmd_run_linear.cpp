// `loraq run-linear QUANTIZED --layer NAME --input X.npy`: one layer of a quantized checkpoint run on
// the quantized kernels (docs/kernels.md), with its timing and, with --check, its error against the
// fake-quantized layer computed in float64.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>

#include "commands.hpp"
#include "device_option.hpp"
#include "loraq/cuda.hpp"
#include "loraq/error.hpp"
#include "loraq/io.hpp"
#include "loraq/linear_kernel.hpp"
#include "loraq/pipeline.hpp"

namespace loraq::cli {
namespace {

// Y in float64 from the fake-quantized activations and the dequantized parts, and for each output
// gamma(n) x (sum |qa1 p| + sum_j |up_j| sum |qa2 down_j| + |b|), the fp32 accumulation bound
// (n: 2 in + rank + 4 roundings at most, on either path). With an intermediate format Qt, the
// kernel's own fp32 T (t_kernel) is checked against T in float64 within its bound, and Y against
// Qa1(X/s) P^T + Qt(t_kernel) up^T + b: quantizing the float64 T instead could round some value the
// other way than the kernel's T, a whole step of Qt, which no fp32 bound covers.
struct Check {
  double worst_ratio = 0;  // max |y - ref| / bound
  double max_abs = 0;
};

Check check_against_reference(const StoredLinear& s, const std::vector<float>& x, std::int64_t rows,
                              const std::vector<float>& y, const std::vector<float>& t_kernel) {
  const std::int64_t in = s.layer.in_features, out = s.layer.out_features;
  std::vector<float> xs(x);
  if (!s.layer.smooth.empty())
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t k = 0; k < in; ++k) xs[std::size_t(i * in + k)] /= s.layer.smooth[std::size_t(k)];
  auto quantized = [&](std::optional<Format> f) {
    std::vector<float> q(xs);
    if (f) fake_quantize(*f, xs, q, rows, in);
    return q;
  };
  const std::vector<float> q1 = quantized(s.info.residual_activation), q2 = quantized(s.info.branch_activation);
  const std::vector<float> p = unpack(s.layer.residual);
  std::vector<float> down, up;
  std::int64_t rank = 0;
  if (s.layer.branch) {
    down = unpack(s.layer.branch->down);
    up = unpack(s.layer.branch->up);
    rank = s.layer.branch->down.rows;
  }
  const double n = double(2 * in + rank + 4), u = std::ldexp(1.0, -24), gamma = n * u / (1 - n * u);
  Check c;
  auto record = [&c](double err, double bound) {
    if (std::isnan(err)) err = INFINITY;  // a NaN output (an fp32 overflow) fails the check, not passes it
    c.max_abs = std::max(c.max_abs, err);
    c.worst_ratio = std::max(c.worst_ratio, bound > 0 ? err / bound : (err > 0 ? INFINITY : 0.0));
  };
  const std::optional<Format> qt = rank > 0 ? s.info.intermediate_activation : std::nullopt;
  std::vector<float> t_quantized;
  if (qt) {
    if (std::int64_t(t_kernel.size()) != rows * rank) throw Error("run-linear --check: no intermediate from the kernel");
    t_quantized.resize(t_kernel.size());
    fake_quantize(*qt, t_kernel, t_quantized, rows, rank);
  }
  std::vector<double> t(static_cast<std::size_t>(rank)), t_abs(static_cast<std::size_t>(rank));
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < rank; ++j) {
      t[std::size_t(j)] = t_abs[std::size_t(j)] = 0;
      for (std::int64_t k = 0; k < in; ++k) {
        const double v = double(q2[std::size_t(i * in + k)]) * down[std::size_t(j * in + k)];
        t[std::size_t(j)] += v;
        t_abs[std::size_t(j)] += std::abs(v);
      }
      if (qt) {  // the kernel's T within its bound; then Y is computed from Qt(that T)
        record(std::abs(double(t_kernel[std::size_t(i * rank + j)]) - t[std::size_t(j)]), gamma * t_abs[std::size_t(j)]);
        t[std::size_t(j)] = t_quantized[std::size_t(i * rank + j)];
        t_abs[std::size_t(j)] = std::abs(t[std::size_t(j)]);
      }
    }
    for (std::int64_t o = 0; o < out; ++o) {
      double ref = s.bias.empty() ? 0.0 : s.bias[std::size_t(o)], mag = std::abs(ref);
      for (std::int64_t k = 0; k < in; ++k) {
        const double v = double(q1[std::size_t(i * in + k)]) * p[std::size_t(o * in + k)];
        ref += v;
        mag += std::abs(v);
      }
      for (std::int64_t j = 0; j < rank; ++j) {
        ref += t[std::size_t(j)] * up[std::size_t(o * rank + j)];
        mag += t_abs[std::size_t(j)] * std::abs(up[std::size_t(o * rank + j)]);
      }
      record(std::abs(double(y[std::size_t(i * out + o)]) - ref), gamma * mag);
    }
  }
  return c;
}

}  // namespace

Command add_run_linear_command(CLI::App& app) {
  struct Options {
    std::string checkpoint, layer, input, output, isa, device = "cpu";
    int threads = 0, repeat = 1;
    bool no_branch = false, check = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "run-linear", "Run one layer of a quantized checkpoint on the quantized kernels: Y = Qa1(X/s) Q1(P)^T + "
                    "Qt(Qa2(X/s) Q2(down)^T) Q2(up)^T + bias, with the layer's activation formats (Qt: its "
                    "intermediate_activation, if any)");
  cmd->add_option("checkpoint", o->checkpoint, "Quantized checkpoint (loraq quantize output)")->required();
  cmd->add_option("--layer", o->layer, "Layer name (P.weight or P)")->required();
  cmd->add_option("--input", o->input, "X: float32 .npy, [rows, in_features] or [in_features]")->required();
  cmd->add_option("--output", o->output, "Write Y here as float32 .npy [rows, out_features]");
  cmd->add_option("--isa", o->isa,
                  "Kernel instruction set: scalar, avx2 (AVX-VNNI where the CPU has it), avx512 (AVX-512 VNNI where "
                  "it has it; else as avx2). Default: the best this CPU has, or the set LORAQ_KERNELS names");
  cmd->add_option("--threads", o->threads, "Threads (0: all)")->check(kNonNegative);
  cmd->add_option("--repeat", o->repeat, "Run this many times and report the median time")->check(kPositive);
  cmd->add_flag("--no-branch", o->no_branch, "Run the residual alone (the branch's cost is the difference)");
  add_device_option(cmd, o->device, "the kernels (CUDA: integer weights and activations)");
  cmd->add_flag("--check", o->check,
                "Compare with the fake-quantized layer in float64; exit 1 if an output is outside the fp32 "
                "accumulation bound");
  return {cmd, [o] {
            const StoredLinear s = load_quantized_linear(o->checkpoint, o->layer);
            const io::NpyArray x_npy = io::read_npy(o->input);
            if (x_npy.dtype != io::DType::f32 || x_npy.shape.empty() || x_npy.shape.size() > 2 ||
                x_npy.shape.back() != s.layer.in_features)
              throw Error(fmt::format("{}: expected float32 [rows, {}] or [{}], got {} [{}]", o->input,
                                      s.layer.in_features, s.layer.in_features, io::dtype_name(x_npy.dtype),
                                      fmt::join(x_npy.shape, ", ")));
            const std::int64_t rows = x_npy.shape.size() == 2 ? x_npy.shape[0] : 1;
            std::vector<float> x(std::size_t(rows * s.layer.in_features));
            std::memcpy(x.data(), x_npy.data.data(), x.size() * sizeof(float));
            // As `cast` refuses non-finite weights: the kernels would give NaN rows, and --check has
            // nothing to compare them with.
            io::require_finite(x, std::vector<std::int64_t>{rows, s.layer.in_features}, o->input, "", "inputs");
            LinearKernelOptions options;
            options.threads = o->threads;
            options.skip_branch = o->no_branch;
            if (!o->isa.empty()) options.isa = parse_isa(o->isa);
            std::vector<float> y(std::size_t(rows * s.layer.out_features));
            std::vector<double> times;
            std::vector<float> t_kernel;  // for --check with an intermediate format
            std::string what;
            auto time_runs = [&](auto&& forward) {
              forward();  // untimed: the first call starts the threads and sizes their scratch
              for (int r = 0; r < o->repeat; ++r) {
                const auto start = std::chrono::steady_clock::now();
                forward();
                times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
              }
            };
            if (const int gpu = cuda_device_number(o->device); gpu >= 0) {
              if (!s.info.residual_activation)
                throw Error(s.info.weight_name + ": the CUDA kernels need an activation format (the layer has none)");
              if (s.info.intermediate_activation && s.layer.branch)
                throw Error(s.info.weight_name + ": the CUDA kernels keep the branch's intermediate in fp32; this layer "
                            "quantizes it (intermediate_activation " +
                            std::string(format_info(*s.info.intermediate_activation).name) + "): run it on the CPU");
              const cuda::LinearKernel kernel(s.layer, *s.info.residual_activation, s.info.branch_activation, s.bias,
                                              s.info.weight_name, gpu);
              what = "CUDA integer kernels on " + o->device + " (host buffers: the times include the copies)";
              time_runs([&] { kernel.forward(x, rows, y, o->no_branch); });
            } else {
              const LayerActivations activations{s.info.residual_activation, s.info.branch_activation,
                                                 s.info.intermediate_activation};
              const QuantizedLinearKernel kernel(s.layer, activations, s.bias, s.info.weight_name);
              what = kernel.describe(options);
              time_runs([&] { kernel.forward(x, rows, y, options); });
              if (o->check && s.info.intermediate_activation) t_kernel = kernel.intermediate(x, rows, options);
            }
            std::sort(times.begin(), times.end());
            const double median = times[times.size() / 2];
            fmt::print("{}: {} x [{}, {}], {}\n", s.info.weight_name, rows, s.layer.out_features, s.layer.in_features,
                       what + (o->no_branch ? " (branch skipped)" : ""));
            fmt::print("time {:.3f} ms (median of {} after a warm-up run), {:.1f} GFLOP/s of the [{}, {}] layer\n",
                       median * 1e3, o->repeat,
                       2e-9 * double(rows * s.layer.out_features * s.layer.in_features) / median, s.layer.out_features,
                       s.layer.in_features);
            if (!o->output.empty()) {
              io::NpyArray out{io::DType::f32, {rows, s.layer.out_features}, {}};
              out.data.resize(y.size() * sizeof(float));
              std::memcpy(out.data.data(), y.data(), out.data.size());
              io::write_npy(o->output, out);
            }
            if (o->check) {
              if (o->no_branch) throw Error("--check compares the whole layer: drop --no-branch");
              const Check c = check_against_reference(s, x, rows, y, t_kernel);
              fmt::print("check: max |Y - reference| {:.3g}, worst output at {:.3f} of its fp32 bound: {}\n", c.max_abs,
                         c.worst_ratio, c.worst_ratio <= 1 ? "ok" : "OUTSIDE THE BOUND");
              if (c.worst_ratio > 1) return 1;
            }
            return 0;
          }};
}

}  // namespace loraq::cli
