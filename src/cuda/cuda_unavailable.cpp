// Stand-in for builds without the CUDA backend.
#include "cuda/cuda_testing.hpp"
#include "loraq/cuda.hpp"
#include "loraq/error.hpp"

namespace loraq::cuda {
bool built() { return false; }
int device_count() { return 0; }
bool supports(Format) { return false; }
namespace {
[[noreturn]] void unavailable() {
  throw Error("this loraq was built without CUDA: install the CUDA toolkit and rebuild with -DLORAQ_CUDA=ON");
}
}  // namespace
void fake_quantize(Format, std::span<const float>, std::span<float>, std::int64_t, std::int64_t, Rounding) {
  unavailable();
}
std::unique_ptr<Accelerator> make_accelerator(int) { unavailable(); }

struct LinearKernel::Impl {};
bool LinearKernel::supports(Format, Format) { return false; }
LinearKernel::LinearKernel(const QuantizedLayer&, Format, std::optional<Format>, std::span<const float>, std::string,
                           int) {
  unavailable();
}
LinearKernel::~LinearKernel() = default;
LinearKernel::LinearKernel(LinearKernel&&) noexcept = default;
LinearKernel& LinearKernel::operator=(LinearKernel&&) noexcept = default;
void LinearKernel::forward(std::span<const float>, std::int64_t, std::span<float>, bool) const { unavailable(); }
double LinearKernel::time_forward(std::int64_t, int, bool) const { unavailable(); }
void LinearKernel::forward_device(const float*, std::int64_t, float*, std::uintptr_t, bool) const { unavailable(); }
int LinearKernel::device() const { unavailable(); }
double time_bf16_gemm(std::int64_t, std::int64_t, std::int64_t, int) { unavailable(); }
namespace testing {
void fake_quantize(Format, Rounding, std::span<const float>, std::span<float>, std::int64_t, std::int64_t,
                   CodecKernel) {
  unavailable();
}
std::vector<double> quantization_error(Format, Rounding, std::span<const float>, std::span<const float>,
                                       std::span<float>, std::int64_t, std::int64_t, CodecKernel) {
  unavailable();
}
void adam_steps(std::span<float>, std::span<const float>, double, int) { unavailable(); }
DeviceTimes time_fake_quantize(Format, std::int64_t, std::int64_t, int, CodecKernel) { unavailable(); }
double time_step_gemms(std::int64_t, std::int64_t, std::int64_t, int) { unavailable(); }
std::vector<float> forward_through_device_memory(const LinearKernel&, std::span<const float>, std::int64_t,
                                                 std::int64_t, bool) {
  unavailable();
}
}  // namespace testing
}  // namespace loraq::cuda
