// Stand-in for builds without the CUDA backend.
#include "loraq/cuda.hpp"
#include "loraq/error.hpp"

namespace loraq::cuda {
bool built() { return false; }
int device_count() { return 0; }
bool supports(Format) { return false; }
void fake_quantize(Format, std::span<const float>, std::span<float>, std::int64_t, std::int64_t, Rounding) {
  throw Error("this loraq was built without CUDA: install the CUDA toolkit and rebuild with -DLORAQ_CUDA=ON");
}
}  // namespace loraq::cuda
