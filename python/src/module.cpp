// The module loraq._core: loraq::Error becomes loraq.Error (a ValueError) with the C++ message.
#include <cmath>
#include <string>

#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "loraq/cuda.hpp"
#include "loraq/error.hpp"
#include "loraq/linalg.hpp"
#include "loraq/pipeline.hpp"

namespace loraq::python {

MatrixShape matrix_shape(const FloatArray& a, const std::string& what) {
  if (a.ndim() == 1) return {1, std::int64_t(a.shape(0))};
  if (a.ndim() == 2) return {std::int64_t(a.shape(0)), std::int64_t(a.shape(1))};
  throw Error(what + ": expected a 1-D or 2-D array (blocks along the last axis), got " + std::to_string(a.ndim()) +
              "-D shape " + shape_text(a));
}

std::string shape_text(const FloatArray& a) {
  std::string text = "(";
  for (std::size_t i = 0; i < a.ndim(); ++i) text += (i ? ", " : "") + std::to_string(a.shape(i));
  return text + (a.ndim() == 1 ? ",)" : ")");
}

std::span<const float> values_of(const FloatArray& a) { return {a.data(), a.size()}; }

Rounding parse_rounding(const std::string& name) {
  if (name == "nearest_even" || name == "ties-even") return Rounding::nearest_even;
  if (name == "nearest_away" || name == "ties-away") return Rounding::nearest_away;
  throw Error("unknown rounding '" + name + "': expected nearest_even or nearest_away");
}

void require_finite(std::span<const float> values, std::int64_t cols, const std::string& what) {
  for (std::size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i])) {
      const std::int64_t row = cols > 0 ? std::int64_t(i) / cols : 0, col = cols > 0 ? std::int64_t(i) % cols : 0;
      throw Error(what + " holds " + (std::isnan(values[i]) ? "NaN" : "Inf") + " at [" + std::to_string(row) + ", " +
                  std::to_string(col) + "]: loraq refuses non-finite values");
    }
}

}  // namespace loraq::python

NB_MODULE(_core, m) {
  namespace nb = nanobind;
  m.doc() = "loraq's C++ core: block formats, quantization methods and checkpoint functions";
  m.attr("__version__") = LORAQ_VERSION;
  // Every bad-input error of loraq (unknown names, bad shapes, bad files) is a loraq::Error.
  nb::exception<loraq::Error>(m, "Error", PyExc_ValueError);
  loraq::python::register_formats(m);
  loraq::python::register_methods(m);
  loraq::python::register_checkpoint(m);
  loraq::python::register_recipes(m);
  loraq::python::register_kernels(m);
  // Layers in flight by default on a GPU (loraq quantize --device cuda; loraq.torch.quantize_module).
  m.attr("DEVICE_LAYERS_IN_FLIGHT") = loraq::kDeviceLayersInFlight;
  m.def("cuda_built", &loraq::cuda::built,
        "Whether this build has the CUDA backend (built where nvcc was found; device=\"cuda\" needs it).");
  m.def("cuda_device_count", &loraq::cuda::device_count, "CUDA GPUs visible to this process (0 without the backend).");
  m.def("openblas_kernels", &loraq::linalg::running_blas_core,
        "The OpenBLAS kernels this process runs (openblas_get_corename(), e.g. 'SkylakeX'). loraq asks for the "
        "widest ones the CPU runs unless OPENBLAS_CORETYPE is set (loraq._blas).");
}
