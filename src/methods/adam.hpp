// Adam (Kingma & Ba 2014) over one flat float array, fused into one pass: LoRaQ's eq. 4 steps.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace loraq::methods {

class Adam {
 public:
  explicit Adam(std::size_t size) : m_(size, 0.0f), v_(size, 0.0f) {}

  // x -= lr * m_hat / (sqrt(v_hat) + eps), in PyTorch's arrangement of the bias corrections
  // (torch.optim.Adam: denominator sqrt(v) / sqrt(1 - beta2^t) + eps). Element-wise, so the bits do
  // not depend on the threads. `save`, when not null, receives x before the step: the best-iterate
  // copy rides on this pass instead of costing one of its own.
  void step(float* x, const float* g, double lr, int threads, float* save = nullptr) {
    ++t_;
    const float b1 = float(kBeta1), b2 = float(kBeta2);
    const float step_size = float(lr / (1.0 - std::pow(kBeta1, double(t_))));
    const float inv_sqrt_bc2 = float(1.0 / std::sqrt(1.0 - std::pow(kBeta2, double(t_))));
    const float eps = float(kEps);
    float* m = m_.data();
    float* v = v_.data();
    const auto n = std::int64_t(m_.size());
#pragma omp parallel for schedule(static) num_threads(threads) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      if (save) save[i] = x[i];
      m[i] = b1 * m[i] + (1.0f - b1) * g[i];
      v[i] = b2 * v[i] + (1.0f - b2) * (g[i] * g[i]);
      x[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }
  }

 private:
  static constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
  std::vector<float> m_, v_;
  std::int64_t t_ = 0;
};

}  // namespace loraq::methods
