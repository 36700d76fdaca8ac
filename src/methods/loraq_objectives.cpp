// LoRaQ's two objectives and their hand-written gradients: eq. 4 (the branch absorbs the residual's
// quantization error) and eq. 7 (a rotation that eases the branch's own quantization).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "loraq/error.hpp"
#include "loraq/linalg.hpp"
#include "methods/loraq_impl.hpp"

namespace loraq::methods::loraq_impl {
namespace {

int thread_count(const QuantOptions& codec) { return codec.threads > 0 ? codec.threads : omp_get_max_threads(); }

// e <- q - e in place (q = Q(x), e = x on entry): the quantization error Q(x) - x; returns its
// sum of squares.
double error_in_place(float* e, const float* q, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) e[i] = q[i] - e[i];
  return sum_squares(e, n);
}

}  // namespace

// Eight interleaved partial sums: a fixed order (the same bits on every run) that the compiler can
// vectorize, unlike one serial chain.
double sum_squares(const float* x, std::int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += double(x[i + k]) * double(x[i + k]);
  for (; i < n; ++i) acc[0] += double(x[i]) * double(x[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

BranchObjective::BranchObjective(std::span<const float> w, std::int64_t out, std::int64_t in, std::int64_t rank,
                                 Format q1, std::optional<Format> q2_inside, const QuantOptions& codec)
    : w_(w), out_(out), in_(in), rank_(rank), q1_(q1), q2_(q2_inside), codec_(codec) {
  if (std::int64_t(w.size()) != out * in) throw Error("loraq: weight size does not match its shape");
  w_norm2_ = sum_squares(w.data(), out * in);
  if (!(w_norm2_ > 0)) w_norm2_ = 1;  // an all-zero weight: f is then the plain squared norm
  e_.resize(std::size_t(out * in));
  row_ss_.resize(std::size_t(out));
  if (q2_) {
    up_q_.resize(std::size_t(out * rank));
    down_q_.resize(std::size_t(rank * in));
  }
}

double BranchObjective::evaluate(const float* up, const float* down, float* grad_up, float* grad_down) {
  const float* u = up;
  const float* d = down;
  if (q2_) {  // straight-through: the loop sees the branch it will store
    fake_quantize(*q2_, {up, std::size_t(out_ * rank_)}, up_q_, out_, rank_, codec_);
    fake_quantize(*q2_, {down, std::size_t(rank_ * in_)}, down_q_, rank_, in_, codec_);
    u = up_q_.data();
    d = down_q_.data();
  }
  float* e = e_.data();
  linalg::gemm(false, false, out_, in_, rank_, 1.0f, u, rank_, d, in_, 0.0f, e, in_);  // B

  // E = Q1(W - B) - (W - B), fused over blocks of rows small enough to stay in L1/L2: one read of
  // W and B, one write of E, the codec in between.
  const int threads = thread_count(codec_);
  const float* w = w_.data();
  if (format_info(q1_).tensor_scale) {
    // nvfp4's tensor scale depends on the whole of W - B: quantize it in one call.
    std::vector<float>& q = whole_q_;
    q.resize(e_.size());
    for (std::size_t i = 0; i < e_.size(); ++i) e[i] = w[i] - e[i];
    fake_quantize(q1_, e_, q, out_, in_, codec_);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::int64_t r = 0; r < out_; ++r)
      row_ss_[std::size_t(r)] = error_in_place(e + r * in_, q.data() + r * in_, in_);
  } else {
    const std::int64_t rows = std::max<std::int64_t>(1, 8192 / in_);
    const std::int64_t chunks = (out_ + rows - 1) / rows;
    QuantOptions serial = codec_;
    serial.threads = 1;
    if (std::int64_t(thread_q_.size()) < threads) thread_q_.resize(std::size_t(threads));
#pragma omp parallel num_threads(threads)
    {
      std::vector<float>& q = thread_q_[std::size_t(omp_get_thread_num())];
      q.resize(std::size_t(rows * in_));
#pragma omp for schedule(static)
      for (std::int64_t c = 0; c < chunks; ++c) {
        const std::int64_t r0 = c * rows, nr = std::min(rows, out_ - r0);
        float* t = e + r0 * in_;
        const float* wc = w + r0 * in_;
        const std::int64_t n = nr * in_;
        for (std::int64_t i = 0; i < n; ++i) t[i] = wc[i] - t[i];
        fake_quantize(q1_, {t, std::size_t(n)}, {q.data(), std::size_t(n)}, nr, in_, serial);
        for (std::int64_t r = 0; r < nr; ++r)
          row_ss_[std::size_t(r0 + r)] = error_in_place(t + r * in_, q.data() + r * in_, in_);
      }
    }
  }
  double ss = 0;
  for (double s : row_ss_) ss += s;  // rows in order: independent of the thread count

  if (grad_up && grad_down) {  // A.3.2, eqs. 9-10 in our convention
    const float alpha = float(2.0 / w_norm2_);
    linalg::gemm(false, true, out_, rank_, in_, alpha, e, in_, d, in_, 0.0f, grad_up, rank_);
    linalg::gemm(true, false, rank_, in_, out_, alpha, u, rank_, e, in_, 0.0f, grad_down, in_);
  }
  return ss / w_norm2_;
}

RotationObjective::RotationObjective(const Factors& factors, Format q2, const QuantOptions& codec)
    : f_(factors), q2_(q2), codec_(codec) {
  up_norm2_ = sum_squares(f_.up.data(), f_.out * f_.rank);
  down_norm2_ = sum_squares(f_.down.data(), f_.rank * f_.in);
  if (!(up_norm2_ > 0)) up_norm2_ = 1;
  if (!(down_norm2_ > 0)) down_norm2_ = 1;
  const auto r = std::size_t(f_.rank);
  omega_f_.resize(r * r);
  grad_f_.resize(r * r);
  a_.resize(std::size_t(f_.out) * r);
  qa_.resize(a_.size());
  c_.resize(r * std::size_t(f_.in));
  qc_.resize(c_.size());
}

double RotationObjective::evaluate(std::span<const double> omega, double* grad) {
  const std::int64_t r = f_.rank, out = f_.out, in = f_.in;
  for (std::size_t i = 0; i < omega_f_.size(); ++i) omega_f_[i] = float(omega[i]);
  linalg::gemm(false, false, out, r, r, 1.0f, f_.up.data(), r, omega_f_.data(), r, 0.0f, a_.data(), r);  // up Omega
  linalg::gemm(true, false, r, in, r, 1.0f, omega_f_.data(), r, f_.down.data(), in, 0.0f, c_.data(),
               in);  // Omega^T down
  fake_quantize(q2_, a_, qa_, out, r, codec_);
  fake_quantize(q2_, c_, qc_, r, in, codec_);
  // qa <- Q2(A) - A, qc <- Q2(C) - C.
  for (std::size_t i = 0; i < a_.size(); ++i) qa_[i] -= a_[i];
  for (std::size_t i = 0; i < c_.size(); ++i) qc_[i] -= c_[i];
  const double loss = sum_squares(qa_.data(), out * r) / up_norm2_ + sum_squares(qc_.data(), r * in) / down_norm2_;
  if (grad) {
    // d/dOmega ||K - up Omega||^2 = -2 up^T (K - up Omega); d/dOmega ||K - Omega^T down||^2 = -2 down (K - Omega^T
    // down)^T.
    linalg::gemm(true, false, r, r, out, float(-2.0 / up_norm2_), f_.up.data(), r, qa_.data(), r, 0.0f, grad_f_.data(),
                 r);
    linalg::gemm(false, true, r, r, in, float(-2.0 / down_norm2_), f_.down.data(), in, qc_.data(), in, 1.0f,
                 grad_f_.data(), r);
    for (std::size_t i = 0; i < grad_f_.size(); ++i) grad[i] = double(grad_f_[i]);
  }
  return loss;
}

}  // namespace loraq::methods::loraq_impl
