// Adam (Kingma & Ba 2014) over one flat float array, fused into one pass: LoRaQ's eq. 4 steps.
#pragma once

#include <cstdint>
#include <vector>

namespace loraq::methods {

// Adam's constants, and the per-step scalars of its update at step t >= 1 (the CUDA backend's Adam
// uses the same, so that both make the same update from the same gradient).
inline constexpr double kAdamBeta1 = 0.9, kAdamBeta2 = 0.999, kAdamEps = 1e-8;
struct AdamScalars {
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
};
AdamScalars adam_scalars(double lr, std::int64_t t);

class Adam {
 public:
  explicit Adam(std::size_t size) : m_(size, 0.0f), v_(size, 0.0f) {}

  // x -= lr * m_hat / (sqrt(v_hat) + eps), in PyTorch's arrangement of the bias corrections
  // (torch.optim.Adam: denominator sqrt(v) / sqrt(1 - beta2^t) + eps); beta1 0.9, beta2 0.999,
  // eps 1e-8. Element-wise, so the bits do not depend on the threads. `save`, when not null,
  // receives x before the step: the best-iterate copy rides on this pass instead of costing its own.
  void step(float* x, const float* g, double lr, int threads, float* save = nullptr);

 private:
  std::vector<float> m_, v_;
  std::int64_t t_ = 0;
};

}  // namespace loraq::methods
