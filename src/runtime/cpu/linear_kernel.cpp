// QuantizedLinearKernel: weights repacked once; forward() runs blocks of 36 tokens, each through
// one pass that quantizes the block's activations (for the residual and the branch), computes the
// branch's intermediate T = Qa2(X) down^T, then every residual panel with the up-projection and bias
// fused into its epilogue (or, with an integer intermediate format, Qt(T) up^T on the integer
// kernels beside the residual's panel, and only the bias in the epilogue). Each output element is
// computed by one thread in a fixed order, so the thread count never changes the bits.
#include "loraq/linear_kernel.hpp"

#include <omp.h>

#include <algorithm>
#include <exception>
#include <mutex>

#include "loraq/error.hpp"
#include "loraq/linalg.hpp"
#include "runtime/cpu/kernel_layout.hpp"

namespace loraq {
namespace {

// Each block streams all weight panels once, so larger blocks read them less often; measured on Zen
// 5 (bench_linear, tiles of 8 tokens), 32 was 3-5% faster than 16 and 64 slower than both (fewer
// blocks to share out). 36 = three of the AVX-512 set's 12-token tiles (on Emerald Rapids 24 to 64
// were alike within the noise) and 4.5 of the 8-token tiles of the others.
constexpr std::int64_t kTokenBlock = 36;

// Calls f(set, first panel, first token, tokens) over panels [p0, p1) and tokens [0, rows): groups
// of ks.panels panels (a trailing shorter group on ks.narrow), each in tiles of the set's tile.
template <class F>
void for_each_call(const runtime::KernelSet& ks, std::int64_t p0, std::int64_t p1, std::int64_t rows, F&& f) {
  for (std::int64_t p = p0; p < p1;) {
    const runtime::KernelSet& s = p1 - p >= ks.panels ? ks : *ks.narrow;
    for (std::int64_t t0 = 0; t0 < rows; t0 += s.tile) f(s, p, t0, int(std::min<std::int64_t>(s.tile, rows - t0)));
    p += s.panels;
  }
}

// f(item) for items [0, n) on `threads` OpenMP threads, dynamically shared out; the first exception
// is rethrown once all have finished (an exception must not leave an OpenMP region).
template <class F>
void parallel_items(std::int64_t n, int threads, F&& f) {
  std::exception_ptr failure;
  std::mutex failure_mutex;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t item = 0; item < n; ++item) {
    try {
      f(item);
    } catch (...) {
      const std::lock_guard lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

// acc = the integer sums of weight panel p (and its partners in the set's call) with the tile's
// activations, on the set's 4- or 8-bit kernel.
void panel_sums(const runtime::KernelSet& s, const runtime::WeightPanels& w, std::int64_t p,
                const runtime::ActivationTile& a, int tokens, float* acc) {
  (w.bits == 4 ? s.w4 : s.w8)(w.panel_codes(p), w.panel_scales(p), w.chunks, a, tokens, acc);
}

std::string format_name(std::optional<Format> f) { return f ? std::string(format_info(*f).name) : "fp32"; }
bool integer_pair(Format weight, std::optional<Format> activation) {
  return activation && integer_kernel_supports(weight, *activation);
}

}  // namespace

bool integer_kernel_supports(Format weight, Format activation) {
  return runtime::integer_format(weight) && runtime::integer_format(activation);
}

struct QuantizedLinearKernel::Impl {
  std::string name;
  std::int64_t out = 0, in = 0, rank = 0;
  Format residual_weight{}, branch_weight{}, up_weight{};
  LayerActivations act;  // unset: fp32
  bool int_residual = false, int_branch = false, int_up = false;
  runtime::WeightPanels residual, down, up_panels;  // integer path
  std::vector<float> residual_f, down_f;  // float path: dequantized [out, in] and [rank, in]
  runtime::UpProjection up;               // the fp32 up-projection of the epilogues (without int_up)
  std::vector<float> bias;                // [panels * kPanel], zero past out
  std::vector<float> smooth;              // [in] or empty
  std::int64_t panels() const { return (out + runtime::kPanel - 1) / runtime::kPanel; }
  std::int64_t t_stride() const { return int_branch ? down.panels * runtime::kPanel : rank; }

  // Outputs y for tokens [m0, m0 + rows) and panels [p0, p1); or, with t_out, only T for those
  // tokens (t_out [rows, rank] row-major, before Qt).
  void run_block(const runtime::KernelSet& ks, const float* x, std::int64_t m0, std::int64_t rows, std::int64_t p0,
                 std::int64_t p1, bool with_branch, float* y, float* t_out = nullptr) const;
  void check_input(std::span<const float> x, std::int64_t rows, const LinearKernelOptions& options) const;
};

QuantizedLinearKernel::QuantizedLinearKernel(const QuantizedLayer& layer, std::optional<Format> residual_activation,
                                             std::optional<Format> branch_activation, std::span<const float> bias, std::string name)
    : QuantizedLinearKernel(layer, LayerActivations{residual_activation, branch_activation, std::nullopt}, bias,
                            std::move(name)) {}

QuantizedLinearKernel::QuantizedLinearKernel(const QuantizedLayer& layer, const LayerActivations& activations,
                                             std::span<const float> bias, std::string name)
    : impl_(std::make_unique<Impl>()) {
  Impl& k = *impl_;
  k.name = std::move(name);
  k.out = layer.out_features;
  k.in = layer.in_features;
  if (layer.residual.rows != k.out || layer.residual.cols != k.in)
    throw Error(k.name + ": residual is " + std::to_string(layer.residual.rows) + "x" +
                std::to_string(layer.residual.cols) + ", expected " + std::to_string(k.out) + "x" + std::to_string(k.in));
  if (!bias.empty() && std::int64_t(bias.size()) != k.out)
    throw Error(k.name + ": bias has " + std::to_string(bias.size()) + " values, expected " + std::to_string(k.out));
  if (!layer.smooth.empty() && std::int64_t(layer.smooth.size()) != k.in)
    throw Error(k.name + ": smoothing vector has " + std::to_string(layer.smooth.size()) + " values, expected " +
                std::to_string(k.in));
  k.residual_weight = layer.residual.format;
  k.act = activations;
  k.smooth = layer.smooth;
  k.int_residual = integer_pair(k.residual_weight, k.act.residual);
  if (k.int_residual)
    k.residual = runtime::make_panels(layer.residual);
  else
    k.residual_f = unpack(layer.residual);
  k.bias.assign(std::size_t(k.panels() * runtime::kPanel), 0.0f);
  std::copy(bias.begin(), bias.end(), k.bias.begin());

  if (layer.branch) {
    const PackedMatrix& d = layer.branch->down;
    const PackedMatrix& u = layer.branch->up;
    k.rank = d.rows;
    if (d.cols != k.in || u.rows != k.out || u.cols != k.rank)
      throw Error(k.name + ": branch factors are down " + std::to_string(d.rows) + "x" + std::to_string(d.cols) +
                  " and up " + std::to_string(u.rows) + "x" + std::to_string(u.cols) + ", expected down [rank, " +
                  std::to_string(k.in) + "] and up [" + std::to_string(k.out) + ", rank]");
    k.branch_weight = d.format;
    k.up_weight = u.format;
    k.int_branch = integer_pair(d.format, k.act.branch);
    if (k.int_branch)
      k.down = runtime::make_panels(d);
    else
      k.down_f = unpack(d);
    k.int_up = integer_pair(u.format, k.act.intermediate);
    if (k.int_up)
      k.up_panels = runtime::make_panels(u);
    else
      k.up = runtime::UpProjection(unpack(u), k.out, k.rank);
  }
}

QuantizedLinearKernel::~QuantizedLinearKernel() = default;
QuantizedLinearKernel::QuantizedLinearKernel(QuantizedLinearKernel&&) noexcept = default;
QuantizedLinearKernel& QuantizedLinearKernel::operator=(QuantizedLinearKernel&&) noexcept = default;

std::int64_t QuantizedLinearKernel::out_features() const { return impl_->out; }
std::int64_t QuantizedLinearKernel::in_features() const { return impl_->in; }
std::int64_t QuantizedLinearKernel::rank() const { return impl_->rank; }
bool QuantizedLinearKernel::residual_is_integer() const { return impl_->int_residual; }
bool QuantizedLinearKernel::branch_is_integer() const { return impl_->int_branch; }
bool QuantizedLinearKernel::up_is_integer() const { return impl_->int_up; }

std::string QuantizedLinearKernel::describe(const LinearKernelOptions& options) const {
  const Impl& k = *impl_;
  const std::string isa((options.isa ? runtime::kernels_for(*options.isa) : runtime::default_kernels()).name);
  auto part = [&](bool integer, Format w, std::optional<Format> a) {
    return (integer ? "integer " : "float ") + format_name(w) + " x " + format_name(a) + " (" +
           (integer ? isa : std::string("sgemm")) + ")";
  };
  std::string s = "residual " + part(k.int_residual, k.residual_weight, k.act.residual);
  if (k.rank > 0) {
    s += "; branch rank " + std::to_string(k.rank) + ": down " + part(k.int_branch, k.branch_weight, k.act.branch);
    if (k.int_up)
      s += ", up " + part(true, k.up_weight, k.act.intermediate);
    else if (k.act.intermediate)
      s += ", up fp32 on " + format_name(k.act.intermediate) + " T (" + isa + ")";
    else
      s += ", up fp32 (" + isa + ")";
  }
  return s;
}

void QuantizedLinearKernel::Impl::run_block(const runtime::KernelSet& ks, const float* x, std::int64_t m0,
                                            std::int64_t rows, std::int64_t p0, std::int64_t p1, bool with_branch,
                                            float* y, float* t_out) const {
  using runtime::kPanel;
  // Per-thread scratch, reused across blocks and calls.
  thread_local std::vector<float> smoothed, xq1, xq2, t_major, t_rows, t_plain, float_out;
  thread_local runtime::ActivationRows a1, a2, at;
  const float* src = x + m0 * in;
  if (!smooth.empty()) {
    smoothed.resize(std::size_t(rows * in));
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t c = 0; c < in; ++c) smoothed[std::size_t(i * in + c)] = src[i * in + c] / smooth[std::size_t(c)];
    src = smoothed.data();
  }
  QuantOptions one_thread;
  one_thread.threads = 1;
  const std::span<const float> src_span(src, std::size_t(rows * in));
  // Float-path inputs: fake-quantized, or the fp32 values themselves without an activation format.
  auto float_input = [&](std::optional<Format> format, std::vector<float>& buffer) -> const float* {
    if (!format) return src;
    buffer.resize(std::size_t(rows * in));
    fake_quantize(*format, src_span, buffer, rows, in, one_thread);
    return buffer.data();
  };
  const float* q1 = nullptr;
  if (int_residual)
    runtime::quantize_activations(*act.residual, src, rows, in, a1);
  else
    q1 = float_input(act.residual, xq1);

  // The branch's intermediate T, from the same activations where the formats agree: t_stride()
  // terms per token, stored term-major within groups of kTokenGroup tokens (kernel_layout.hpp).
  const std::int64_t ts = t_stride(), group = runtime::kTokenGroup;
  auto t_at = [&](std::int64_t token, std::int64_t j) -> float& {
    return t_rows[std::size_t(((token / group) * ts + j) * group + token % group)];
  };
  if (with_branch) {
    t_rows.resize(std::size_t((rows + group - 1) / group * group * ts));
    if (int_branch) {
      const runtime::ActivationRows* a = &a1;
      if (!(int_residual && act.branch == act.residual)) {
        runtime::quantize_activations(*act.branch, src, rows, in, a2);
        a = &a2;
      }
      for_each_call(ks, 0, down.panels, rows, [&](const runtime::KernelSet& s, std::int64_t p, std::int64_t t0,
                                                  int nt) {
        float acc[runtime::kMaxTile * runtime::kMaxPanels * kPanel];
        panel_sums(s, down, p, runtime::tile_at(*a, t0), nt, acc);
        for (int t = 0; t < nt; ++t)
          for (int r = 0; r < s.rows(); ++r) t_at(t0 + t, p * kPanel + r) = acc[t * s.rows() + r];
      });
    } else {
      const float* q = int_residual || act.branch != act.residual ? float_input(act.branch, xq2) : q1;
      t_major.resize(std::size_t(rows * ts));
      linalg::gemm(false, true, rows, rank, in, 1.0f, q, in, down_f.data(), in, 0.0f, t_major.data(), ts);
      for (std::int64_t t = 0; t < rows; ++t)
        for (std::int64_t j = 0; j < ts; ++j) t_at(t, j) = t_major[std::size_t(t * ts + j)];
    }
    // T row-major, for intermediate() or for Qt, which quantizes per token.
    if (t_out || act.intermediate) {
      t_plain.resize(std::size_t(rows * rank));
      for (std::int64_t t = 0; t < rows; ++t)
        for (std::int64_t j = 0; j < rank; ++j) t_plain[std::size_t(t * rank + j)] = t_at(t, j);
    }
    if (t_out) {
      std::copy(t_plain.begin(), t_plain.end(), t_out + m0 * rank);
      return;
    }
    if (int_up) {
      runtime::quantize_activations(*act.intermediate, t_plain.data(), rows, rank, at);
    } else if (act.intermediate) {  // Qt(T), back into the fp32 epilogue's layout
      fake_quantize(*act.intermediate, t_plain, t_plain, rows, rank, one_thread);
      for (std::int64_t t = 0; t < rows; ++t)
        for (std::int64_t j = 0; j < rank; ++j) t_at(t, j) = t_plain[std::size_t(t * rank + j)];
    }
  }

  // The residual, panel by panel, with the up-projection and the bias in the epilogue.
  const std::int64_t col0 = p0 * kPanel, cols = std::min(out, p1 * kPanel) - col0;
  if (!int_residual) {
    float_out.resize(std::size_t(rows * cols));
    linalg::gemm(false, true, rows, cols, in, 1.0f, q1, in, residual_f.data() + col0 * in, in, 0.0f,
                 float_out.data(), cols);
  }
  const bool up_in_epilogue = with_branch && !int_up;
  for_each_call(ks, p0, p1, rows, [&](const runtime::KernelSet& s, std::int64_t p, std::int64_t t0, int nt) {
    constexpr int kMaxRows = runtime::kMaxPanels * kPanel;
    float acc[runtime::kMaxTile * kMaxRows], partial[runtime::kMaxTile * kMaxRows];
    const std::int64_t c0 = p * kPanel, valid = std::min<std::int64_t>(s.rows(), out - c0);
    if (int_residual) {
      panel_sums(s, residual, p, runtime::tile_at(a1, t0), nt, acc);
    } else {
      for (int t = 0; t < nt; ++t)
        for (int r = 0; r < s.rows(); ++r)
          acc[t * s.rows() + r] = r < valid ? float_out[std::size_t((t0 + t) * cols + c0 - col0 + r)] : 0.0f;
    }
    if (with_branch && int_up) {  // Qt(T) up^T on the same panel, added to the residual's sums
      float up_acc[runtime::kMaxTile * kMaxRows];
      panel_sums(s, up_panels, p, runtime::tile_at(at, t0), nt, up_acc);
      for (int i = 0; i < nt * s.rows(); ++i) acc[i] += up_acc[i];
    }
    // Whole panels straight into y; a trailing partial one (out not a multiple of the set's rows)
    // through a buffer, so that nothing is written past the row's end.
    float* const dest = y + (m0 + t0) * out + c0;
    const bool whole = valid == s.rows();
    s.epilogue(acc, up_in_epilogue ? &t_at(t0, 0) : nullptr, group,
               up_in_epilogue ? up.rows_of(p) : nullptr, up.stride, up_in_epilogue ? rank : 0,
               bias.data() + c0, nt, whole ? dest : partial, whole ? out : s.rows());
    if (!whole)
      for (int t = 0; t < nt; ++t) std::copy_n(partial + t * s.rows(), valid, dest + t * out);
  });
}

void QuantizedLinearKernel::Impl::check_input(std::span<const float> x, std::int64_t rows,
                                              const LinearKernelOptions& options) const {
  if (rows < 0 || std::int64_t(x.size()) != rows * in)
    throw Error(name + ": input has " + std::to_string(x.size()) + " values, expected " + std::to_string(rows) +
                " x " + std::to_string(in));
  if (options.isa && !isa_available(*options.isa))
    throw Error(name + ": this CPU cannot run " + std::string(isa_name(*options.isa)) + " kernels");
}

void QuantizedLinearKernel::forward(std::span<const float> x, std::int64_t rows, std::span<float> y,
                                    const LinearKernelOptions& options) const {
  const Impl& k = *impl_;
  k.check_input(x, rows, options);
  if (std::int64_t(y.size()) != rows * k.out)
    throw Error(k.name + ": output has room for " + std::to_string(y.size()) + " values, expected " +
                std::to_string(rows) + " x " + std::to_string(k.out));
  const runtime::KernelSet& ks = options.isa ? runtime::kernels_for(*options.isa) : runtime::default_kernels();
  const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  const bool with_branch = k.rank > 0 && !options.skip_branch;
  // Blocks of tokens; when there are too few to keep every thread busy, each block's panels are
  // split as well (each part then quantizes its block's activations and computes T itself).
  const std::int64_t blocks = (rows + kTokenBlock - 1) / kTokenBlock;
  // Parts start on whole groups of the kernel set's panels.
  const std::int64_t panels = k.panels(), groups = (panels + ks.panels - 1) / ks.panels;
  const std::int64_t per_block =
      blocks >= 2 * threads
          ? 1
          : std::clamp<std::int64_t>((2 * threads + blocks - 1) / std::max<std::int64_t>(1, blocks), 1,
                                     std::max<std::int64_t>(1, groups));
  auto part_start = [&](std::int64_t g) { return std::min(panels, groups * g / per_block * ks.panels); };
  parallel_items(blocks * per_block, threads, [&](std::int64_t item) {
    const std::int64_t block = item / per_block, g = item % per_block;
    const std::int64_t m0 = block * kTokenBlock;
    k.run_block(ks, x.data(), m0, std::min(kTokenBlock, rows - m0), part_start(g), part_start(g + 1), with_branch,
                y.data());
  });
}

std::vector<float> QuantizedLinearKernel::intermediate(std::span<const float> x, std::int64_t rows,
                                                       const LinearKernelOptions& options) const {
  const Impl& k = *impl_;
  k.check_input(x, rows, options);
  if (k.rank == 0) return {};
  const runtime::KernelSet& ks = options.isa ? runtime::kernels_for(*options.isa) : runtime::default_kernels();
  std::vector<float> t(std::size_t(rows * k.rank));
  parallel_items((rows + kTokenBlock - 1) / kTokenBlock, options.threads > 0 ? options.threads : omp_get_max_threads(),
                 [&](std::int64_t block) {
                   const std::int64_t m0 = block * kTokenBlock;
                   k.run_block(ks, x.data(), m0, std::min(kTokenBlock, rows - m0), 0, 0, true, nullptr, t.data());
                 });
  return t;
}

}  // namespace loraq
