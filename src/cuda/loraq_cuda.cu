// LoRaQ's two optimization loops on a GPU (loraq/accelerator.hpp): the CPU loops of
// src/methods/loraq.cpp and loraq_objectives.cpp step for step, with cuBLAS for the products, the
// fused quantization-error kernel for eq. 4's E and eq. 7's Q2(A) - A, Adam and the Cayley update on
// the device, and cuSOLVER's LU for the Cayley transform. Only the objective (one double per step)
// and the Cayley step bound cross to the host, which keeps the best-iterate and finiteness logic
// the CPU's.
//
// What differs from the CPU: the GEMMs (cuBLAS and OpenBLAS sum in different orders) and the
// order of the sums of squares, so iterates agree to rounding, not to the bit. The codecs, the
// error kernel given the same B, and an Adam step given the same gradient are bit-identical
// (tests/cpp/test_cuda.cpp).
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_support.cuh"
#include "cuda/cuda_testing.hpp"
#include "cuda/quant_kernels.cuh"
#include "loraq/cuda.hpp"
#include "methods/adam.hpp"
#include "methods/loraq_impl.hpp"

namespace loraq::cuda {
namespace detail {
namespace {

constexpr int kThreads = 256;

// methods/adam.cpp's update, operation for operation (-ffp-contract=off there, _rn intrinsics here).
__global__ void adam_kernel(float* x, const float* g, float* m, float* v, float* save, std::int64_t n, float step_size,
                            float inv_sqrt_bc2) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float b1 = float(methods::kAdamBeta1), b2 = float(methods::kAdamBeta2), eps = float(methods::kAdamEps);
  if (save) save[i] = x[i];
  const float gi = g[i];
  const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(1.0f - b1, gi));
  const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(1.0f - b2, __fmul_rn(gi, gi)));
  m[i] = mi;
  v[i] = vi;
  x[i] = __fsub_rn(x[i], __fdiv_rn(__fmul_rn(step_size, mi), __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_sqrt_bc2), eps)));
}

__global__ void identity_kernel(double* a, std::int64_t n) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n * n) a[i] = i / n == i % n ? 1.0 : 0.0;
}

__global__ void to_float_kernel(const double* in, float* out, std::int64_t n) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = float(in[i]);
}

__global__ void to_double_kernel(const float* in, double* out, std::int64_t n) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = double(in[i]);
}

// w = (p - p^T) / 2, the skew-symmetric matrix of cayley.cpp.
__global__ void skew_kernel(const double* p, double* w, std::int64_t n) {
  const std::int64_t k = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n * n) return;
  const std::int64_t i = k / n, j = k % n;
  w[k] = 0.5 * (p[k] - p[j * n + i]);
}

// norm = max over columns of sum |w[i, j]| (SpinQuant's matrix_norm_one), columns summed in order.
__global__ void norm_one_kernel(const double* w, std::int64_t n, double* norm) {
  __shared__ double best[kThreads];
  double m = 0;
  for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    double col = 0;
    for (std::int64_t i = 0; i < n; ++i) col += fabs(w[i * n + j]);
    m = fmax(m, col);
  }
  best[threadIdx.x] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int t = 1; t < int(blockDim.x); ++t) m = fmax(m, best[t]);
    *norm = m;
  }
}

// The Cayley system in cuSOLVER's column-major layout: a = I - h w and rhs = omega + h (w omega),
// from row-major w, omega and wo = w omega.
__global__ void cayley_system_kernel(const double* w, const double* omega, const double* wo, double h, double* a,
                                     double* rhs, std::int64_t n) {
  const std::int64_t k = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n * n) return;
  const std::int64_t i = k / n, j = k % n;  // row-major (i, j)
  // Rounded products and sums, as the CPU's (built without contraction) computes them: nvcc would
  // otherwise fuse each into one fused multiply-add.
  a[i + j * n] = __dsub_rn(i == j ? 1.0 : 0.0, __dmul_rn(h, w[k]));
  rhs[i + j * n] = __dadd_rn(omega[k], __dmul_rn(h, wo[k]));
}

// cuSOLVER reports a singular matrix (getrf) or a rejected argument in `info` on the device; the
// first non-zero one is kept in `first` (zeroed before the loop) and read with each step's objective,
// so that a failed solve stops the method as the CPU's linalg::solve does instead of going on with
// garbage (W is skew-symmetric, so I - h W is never singular unless a NaN got in).
__global__ void keep_first_failure_kernel(const int* info, int* first) {
  if (*first == 0 && *info != 0) *first = *info;
}

__global__ void from_column_major_kernel(const double* cm, double* rm, std::int64_t n) {
  const std::int64_t k = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n * n) return;
  rm[k] = cm[(k / n) + (k % n) * n];
}

template <class Kernel, class... Args>
void launch(Kernel kernel, std::int64_t n, cudaStream_t s, const char* name, Args... args) {
  if (n == 0) return;
  kernel<<<grid_for(n, kThreads), kThreads, 0, s>>>(args...);
  check_launch(name);
}

DeviceFormat format_or_throw(Format f, Rounding rounding) {
  DeviceFormat g;
  if (!device_format(f, rounding, g))
    throw Error(std::string("the CUDA backend has no kernel for ") + std::string(format_info(f).name));
  return g;
}

// Adam's moments on the device, zero at the start.
class DeviceAdam {
 public:
  DeviceAdam(std::size_t n, const Session& s) : m_(n), v_(n) {
    check(cudaMemsetAsync(m_.get(), 0, n * sizeof(float), s.stream()), "memset");
    check(cudaMemsetAsync(v_.get(), 0, n * sizeof(float), s.stream()), "memset");
  }
  void step(const Session& s, float* x, const float* g, double lr, float* save) {
    const methods::AdamScalars a = methods::adam_scalars(lr, ++t_);
    launch(adam_kernel, std::int64_t(m_.size()), s.stream(), "adam_kernel", x, g, m_.get(), v_.get(), save,
           std::int64_t(m_.size()), a.step_size, a.inv_sqrt_bc2);
  }

 private:
  DeviceBuffer<float> m_, v_;
  std::int64_t t_ = 0;
};

// Reads one device double (synchronizing the stream).
double read_scalar(const Session& s, const DeviceBuffer<double>& d, std::size_t index = 0) {
  double host = 0;
  check(cudaMemcpyAsync(&host, d.get() + index, sizeof(double), cudaMemcpyDeviceToHost, s.stream()), "copy to host");
  s.sync();
  return host;
}

class CudaAccelerator final : public Accelerator {
 public:
  explicit CudaAccelerator(int device) : device_(device) {
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    name_ = "cuda:" + std::to_string(device) + " (" + prop.name + ")";
  }
  std::string describe() const override { return name_; }
  bool supports(Format f) const override { return cuda::supports(f); }

  OptimizerTrace optimize_branch(const BranchProblem& p, std::span<float> up, std::span<float> down, int steps,
                                 double lr, bool keep_best) const override;
  OptimizerTrace optimize_rotation(std::span<const float> up, std::span<const float> down, std::int64_t out,
                                   std::int64_t in, std::int64_t rank, Format q2, Rounding rounding, int steps,
                                   double lr, bool keep_best, std::span<double> omega) const override;

 private:
  int device_;
  std::string name_;
};

OptimizerTrace CudaAccelerator::optimize_branch(const BranchProblem& p, std::span<float> up_host,
                                                std::span<float> down_host, int steps, double lr,
                                                bool keep_best) const {
  const std::int64_t out = p.out, in = p.in, rank = p.rank;
  const auto nw = std::size_t(out * in), nu = std::size_t(out * rank), nd = std::size_t(rank * in);
  if (p.weight.size() != nw || up_host.size() != nu || down_host.size() != nd)
    throw Error("cuda optimize_branch: the weight or factors do not match [out, in, rank]");
  const DeviceFormat g1 = format_or_throw(p.q1, p.rounding);
  const std::optional<DeviceFormat> g2 =
      p.q2_inside ? std::optional<DeviceFormat>(format_or_throw(*p.q2_inside, p.rounding)) : std::nullopt;
  double w_norm2 = methods::loraq_impl::sum_squares(p.weight.data(), std::int64_t(nw));
  if (!(w_norm2 > 0)) w_norm2 = 1;  // an all-zero weight, as BranchObjective

  const DeviceScope scope(device_);  // the caller's current GPU again on return
  Session& s = thread_session(device_);
  DeviceBuffer<float> w(nw), e(nw), u(nu), d(nd), grad_u(nu), grad_d(nd);
  DeviceBuffer<float> best_u(keep_best ? nu : 0), best_d(keep_best ? nd : 0);
  DeviceBuffer<float> u_q(g2 ? nu : 0), d_q(g2 ? nd : 0);
  DeviceBuffer<double> row_ss{std::size_t(out)}, total{1};
  w.upload(p.weight.data(), s.stream());
  u.upload(up_host.data(), s.stream());
  d.upload(down_host.data(), s.stream());
  DeviceAdam adam_u(nu, s), adam_d(nd, s);

  // BranchObjective::evaluate: B = up down, E = Q1(W - B) - (W - B), f = ||E||^2 / ||W||^2, and
  // grad_up = 2 E down^T / ||W||^2, grad_down = 2 up^T E / ||W||^2 (launched before the objective
  // is read back, so they overlap the copy).
  auto evaluate = [&](bool with_gradient) {
    const float* uu = u.get();
    const float* dd = d.get();
    if (g2) {
      fake_quantize_device(*g2, u.get(), u_q.get(), out, rank, s.stream());
      fake_quantize_device(*g2, d.get(), d_q.get(), rank, in, s.stream());
      uu = u_q.get(), dd = d_q.get();
    }
    gemm(s, false, false, out, in, rank, 1.0f, uu, rank, dd, in, 0.0f, e.get(), in);
    quantization_error_device(g1, w.get(), e.get(), e.get(), row_ss.get(), out, in, s.stream());
    sum_device(row_ss.get(), out, total.get(), s.stream());
    if (with_gradient) {
      const float alpha = float(2.0 / w_norm2);
      gemm(s, false, true, out, rank, in, alpha, e.get(), in, dd, in, 0.0f, grad_u.get(), rank);
      gemm(s, true, false, rank, in, out, alpha, uu, rank, e.get(), in, 0.0f, grad_d.get(), in);
    }
    return read_scalar(s, total) / w_norm2;
  };

  // loraq.cpp optimize_branch.
  const OptimizerTrace trace = methods::loraq_impl::descend(steps, keep_best, "eq. 4", evaluate, [&](bool save) {
    adam_u.step(s, u.get(), grad_u.get(), lr, save ? best_u.get() : nullptr);
    adam_d.step(s, d.get(), grad_d.get(), lr, save ? best_d.get() : nullptr);
  });
  const bool use_best = keep_best && trace.best_step != steps;
  (use_best ? best_u : u).download(up_host.data(), s.stream());
  (use_best ? best_d : d).download(down_host.data(), s.stream());
  s.sync();
  return trace;
}

OptimizerTrace CudaAccelerator::optimize_rotation(std::span<const float> up_host, std::span<const float> down_host,
                                                  std::int64_t out, std::int64_t in, std::int64_t r, Format q2,
                                                  Rounding rounding, int steps, double lr, bool keep_best,
                                                  std::span<double> omega_host) const {
  const auto nu = std::size_t(out * r), nd = std::size_t(r * in), nr = std::size_t(r * r);
  if (up_host.size() != nu || down_host.size() != nd || omega_host.size() != nr)
    throw Error("cuda optimize_rotation: the factors or Omega do not match [out, in, rank]");
  const DeviceFormat g = format_or_throw(q2, rounding);
  double up_norm2 = methods::loraq_impl::sum_squares(up_host.data(), std::int64_t(nu));
  double down_norm2 = methods::loraq_impl::sum_squares(down_host.data(), std::int64_t(nd));
  if (!(up_norm2 > 0)) up_norm2 = 1;
  if (!(down_norm2 > 0)) down_norm2 = 1;

  const DeviceScope scope(device_);  // the caller's current GPU again on return
  Session& s = thread_session(device_);
  DeviceBuffer<float> u(nu), d(nd), a(nu), c(nd), omega_f(nr), grad_f(nr);
  DeviceBuffer<double> omega(nr), best(nr), grad(nr), p(nr), skew(nr), wo(nr), a_cm(nr), rhs_cm(nr);
  DeviceBuffer<double> row_ss{std::size_t(std::max(out, r))}, totals{2}, norm{1};
  DeviceBuffer<int> pivots(nr > 0 ? std::size_t(r) : 0), info(1), first_failure(1);
  check(cudaMemsetAsync(first_failure.get(), 0, sizeof(int), s.stream()), "cudaMemset");
  u.upload(up_host.data(), s.stream());
  d.upload(down_host.data(), s.stream());
  int lwork = 0;
  check(cusolverDnDgetrf_bufferSize(s.solver(), int(r), int(r), a_cm.get(), int(r), &lwork), "getrf_bufferSize");
  DeviceBuffer<double> work(std::size_t(std::max(lwork, 1)));
  launch(identity_kernel, std::int64_t(nr), s.stream(), "identity_kernel", omega.get(), r);

  int failure = 0;  // first_failure as last read, after a synchronization
  auto throw_if_failed = [&] {
    if (failure != 0)
      throw Error(failure > 0 ? "cuda optimize_rotation: the Cayley system is singular (cuSOLVER getrf: zero pivot " +
                                    std::to_string(failure) + ")"
                              : "cuda optimize_rotation: cuSOLVER rejected argument " + std::to_string(-failure));
  };

  // RotationObjective::evaluate: A = up Omega, C = Omega^T down, f = ||Q2(A) - A||^2 / ||up||^2 +
  // ||Q2(C) - C||^2 / ||down||^2, grad = -2 up^T (Q2(A) - A) / ||up||^2 - 2 down (Q2(C) - C)^T / ||down||^2.
  auto evaluate = [&](bool with_gradient) {
    launch(to_float_kernel, std::int64_t(nr), s.stream(), "to_float_kernel", omega.get(), omega_f.get(),
           std::int64_t(nr));
    gemm(s, false, false, out, r, r, 1.0f, u.get(), r, omega_f.get(), r, 0.0f, a.get(), r);
    gemm(s, true, false, r, in, r, 1.0f, omega_f.get(), r, d.get(), in, 0.0f, c.get(), in);
    quantization_error_device(g, a.get(), nullptr, a.get(), row_ss.get(), out, r, s.stream());
    sum_device(row_ss.get(), out, totals.get(), s.stream());
    quantization_error_device(g, c.get(), nullptr, c.get(), row_ss.get(), r, in, s.stream());
    sum_device(row_ss.get(), r, totals.get() + 1, s.stream());
    if (with_gradient) {
      gemm(s, true, false, r, r, out, float(-2.0 / up_norm2), u.get(), r, a.get(), r, 0.0f, grad_f.get(), r);
      gemm(s, false, true, r, r, in, float(-2.0 / down_norm2), d.get(), in, c.get(), in, 1.0f, grad_f.get(), r);
      launch(to_double_kernel, std::int64_t(nr), s.stream(), "to_double_kernel", grad_f.get(), grad.get(),
             std::int64_t(nr));
    }
    double t[2];
    check(cudaMemcpyAsync(t, totals.get(), sizeof t, cudaMemcpyDeviceToHost, s.stream()), "copy to host");
    check(cudaMemcpyAsync(&failure, first_failure.get(), sizeof failure, cudaMemcpyDeviceToHost, s.stream()),
          "copy to host");
    s.sync();
    throw_if_failed();
    return t[0] / up_norm2 + t[1] / down_norm2;
  };

  // cayley.cpp cayley_step: W = (Omega G^T - G Omega^T) / 2, alpha = min(lr, 1 / (||W||_1 + 1e-8)),
  // Omega <- (I - alpha/2 W)^-1 (I + alpha/2 W) Omega, solved by LU.
  auto cayley_step = [&] {
    gemm(s, false, true, r, r, r, 1.0, omega.get(), r, grad.get(), r, 0.0, p.get(), r);
    launch(skew_kernel, std::int64_t(nr), s.stream(), "skew_kernel", p.get(), skew.get(), r);
    norm_one_kernel<<<1, kThreads, 0, s.stream()>>>(skew.get(), r, norm.get());
    check_launch("norm_one_kernel");
    const double alpha = std::min(lr, 1.0 / (read_scalar(s, norm) + 1e-8));
    if (alpha <= 0) return;
    gemm(s, false, false, r, r, r, 1.0, skew.get(), r, omega.get(), r, 0.0, wo.get(), r);
    launch(cayley_system_kernel, std::int64_t(nr), s.stream(), "cayley_system_kernel", skew.get(), omega.get(),
           wo.get(), 0.5 * alpha, a_cm.get(), rhs_cm.get(), r);
    check(cusolverDnDgetrf(s.solver(), int(r), int(r), a_cm.get(), int(r), work.get(), pivots.get(), info.get()),
          "getrf");
    keep_first_failure_kernel<<<1, 1, 0, s.stream()>>>(info.get(), first_failure.get());
    check_launch("keep_first_failure_kernel");
    check(cusolverDnDgetrs(s.solver(), CUBLAS_OP_N, int(r), int(r), a_cm.get(), int(r), pivots.get(), rhs_cm.get(),
                           int(r), info.get()),
          "getrs");
    keep_first_failure_kernel<<<1, 1, 0, s.stream()>>>(info.get(), first_failure.get());
    check_launch("keep_first_failure_kernel");
    launch(from_column_major_kernel, std::int64_t(nr), s.stream(), "from_column_major_kernel", rhs_cm.get(),
           omega.get(), r);
  };

  // loraq.cpp optimize_rotation.
  const OptimizerTrace trace = methods::loraq_impl::descend(steps, keep_best, "eq. 7", evaluate, [&](bool save) {
    if (save) best.copy_from(omega, s.stream());
    cayley_step();
  });
  (keep_best && trace.best_step != steps ? best : omega).download(omega_host.data(), s.stream());
  check(cudaMemcpyAsync(&failure, first_failure.get(), sizeof failure, cudaMemcpyDeviceToHost, s.stream()),
        "copy to host");
  s.sync();
  throw_if_failed();  // the last step's solve
  return trace;
}

}  // namespace
}  // namespace detail

std::unique_ptr<Accelerator> make_accelerator(int device) {
  const int count = device_count();
  // Named by the device alone: the command line's --device and Python's device= both get here.
  const std::string name = "device cuda:" + std::to_string(device);
  if (count == 0) throw Error(name + ": no CUDA GPU is visible (cudaGetDeviceCount returned 0)");
  if (device < 0 || device >= count)
    throw Error(name + ": this machine has " + std::to_string(count) + " CUDA GPU(s), numbered from 0");
  return std::make_unique<detail::CudaAccelerator>(device);
}

// The test hooks of cuda_testing.hpp: single kernels from host buffers.
namespace testing {

void fake_quantize(Format f, Rounding rounding, std::span<const float> in, std::span<float> out, std::int64_t rows,
                   std::int64_t cols, CodecKernel kernel) {
  const detail::DeviceFormat g = detail::format_or_throw(f, rounding);
  const auto n = std::size_t(rows * cols);
  if (n == 0) return;
  detail::Session s(0);
  detail::DeviceBuffer<float> din(n), dout(n);
  din.upload(in.data(), s.stream());
  detail::fake_quantize_device(g, din.get(), dout.get(), rows, cols, s.stream(), kernel);
  dout.download(out.data(), s.stream());
  s.sync();
}

std::vector<double> quantization_error(Format f, Rounding rounding, std::span<const float> x, std::span<const float> y,
                                       std::span<float> e, std::int64_t rows, std::int64_t cols, CodecKernel kernel) {
  const detail::DeviceFormat g = detail::format_or_throw(f, rounding);
  const auto n = std::size_t(rows * cols);
  detail::Session s(0);
  detail::DeviceBuffer<float> dx(n), dy(n), de(n);
  detail::DeviceBuffer<double> ss{std::size_t(rows)};
  dx.upload(x.data(), s.stream());
  dy.upload(y.data(), s.stream());
  detail::quantization_error_device(g, dx.get(), dy.get(), de.get(), ss.get(), rows, cols, s.stream(), kernel);
  std::vector<double> row_ss(static_cast<std::size_t>(rows));
  de.download(e.data(), s.stream());
  ss.download(row_ss.data(), s.stream());
  s.sync();
  return row_ss;
}

void adam_steps(std::span<float> x, std::span<const float> g, double lr, int steps) {
  const std::size_t n = x.size();
  detail::Session s(0);
  detail::DeviceBuffer<float> dx(n), dg(n);
  dx.upload(x.data(), s.stream());
  dg.upload(g.data(), s.stream());
  detail::DeviceAdam adam(n, s);
  for (int t = 0; t < steps; ++t) adam.step(s, dx.get(), dg.get(), lr, nullptr);
  dx.download(x.data(), s.stream());
  s.sync();
}

DeviceTimes time_fake_quantize(Format f, std::int64_t rows, std::int64_t cols, int repeats, CodecKernel kernel) {
  const detail::DeviceFormat g = detail::format_or_throw(f, Rounding::nearest_even);
  const auto n = std::size_t(rows * cols);
  detail::Session s(0);
  detail::DeviceBuffer<float> in(n), out(n);
  detail::fill_uniform(s, in, 1);
  DeviceTimes t;
  t.op = detail::median_seconds(s, repeats, [&] {
    detail::fake_quantize_device(g, in.get(), out.get(), rows, cols, s.stream(), kernel);
  });
  t.anchor = detail::median_seconds(s, repeats, [&] { out.copy_from(in, s.stream()); });
  return t;
}

double time_step_gemms(std::int64_t out, std::int64_t in, std::int64_t rank, int repeats) {
  detail::Session s(0);
  detail::DeviceBuffer<float> up(std::size_t(out * rank)), down(std::size_t(rank * in)), e(std::size_t(out * in));
  detail::DeviceBuffer<float> grad_up(up.size()), grad_down(down.size());
  detail::fill_uniform(s, up, 2);
  detail::fill_uniform(s, down, 3);
  return detail::median_seconds(s, repeats, [&] {
    detail::gemm(s, false, false, out, in, rank, 1.0f, up.get(), rank, down.get(), in, 0.0f, e.get(), in);
    detail::gemm(s, false, true, out, rank, in, 1.0f, e.get(), in, down.get(), in, 0.0f, grad_up.get(), rank);
    detail::gemm(s, true, false, rank, in, out, 1.0f, up.get(), rank, e.get(), in, 0.0f, grad_down.get(), in);
  });
}

}  // namespace testing
}  // namespace loraq::cuda
