// Adam (Kingma & Ba 2014) over one flat float array, fused into one pass: LoRaQ's eq. 4 steps.
#pragma once

#include <cstdint>
#include <vector>

namespace loraq::methods {

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
