// loraq._core.LinearKernel: the quantized linear kernels (include/loraq/linear_kernel.hpp) on numpy
// arrays; loraq.torch's QuantizedLinear(backend="kernel") runs on it. loraq._core.CudaLinearKernel:
// the same layer on a GPU (loraq/cuda.hpp), on tensors already in its memory, for inputs on a GPU.
#include <cstdint>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "loraq/cuda.hpp"
#include "loraq/error.hpp"
#include "loraq/linear_kernel.hpp"

namespace loraq::python {
namespace {

std::optional<Format> format_or_fp32(const std::optional<std::string>& name) {
  if (!name) return std::nullopt;
  return parse_format(*name);
}

std::vector<float> vector_of(const std::optional<FloatArray>& a, const std::string& what) {
  if (!a) return {};
  if (a->ndim() != 1) throw Error(what + ": expected a 1-D array, got shape " + shape_text(*a));
  return {a->data(), a->data() + a->size()};
}

// The rows of x after checking that its columns are the layer's inputs (`what` names the method).
std::int64_t input_rows(const QuantizedLinearKernel& k, const FloatArray& x, const std::string& what) {
  const MatrixShape shape = matrix_shape(x, what + ": x");
  if (shape.cols != k.in_features())
    throw Error(what + ": x has " + std::to_string(shape.cols) + " features, the layer takes " +
                std::to_string(k.in_features()));
  return shape.rows;
}

// The layer a kernel runs, from the packed parts a QuantizedWeight or a checkpoint gives.
QuantizedLayer layer_of(const PackedMatrix& residual, const PackedMatrix* down, const PackedMatrix* up,
                        const std::optional<FloatArray>& smooth, const std::string& name) {
  if ((down == nullptr) != (up == nullptr)) throw Error(name + ": give both down and up, or neither");
  QuantizedLayer layer;
  layer.out_features = residual.rows;
  layer.in_features = residual.cols;
  layer.residual = residual;
  if (down) layer.branch = LowRankBranch{*down, *up};
  layer.smooth = vector_of(smooth, name + ": smooth");
  return layer;
}

LinearKernelOptions kernel_options(int threads, const std::optional<std::string>& isa) {
  LinearKernelOptions options;
  options.threads = threads;
  if (isa) options.isa = parse_isa(*isa);
  return options;
}

}  // namespace

void register_kernels(nb::module_& m) {
  nb::class_<QuantizedLinearKernel>(
      m, "LinearKernel",
      "Y = Qa1(X/s) Q1(P)^T + Qt(Qa2(X/s) Q2(down)^T) Q2(up)^T + bias from the packed parts: integer kernels "
      "where weight and activation formats are integer (sint4, mxint4, mxint8, int8_channel), fp32 GEMM "
      "on fake-quantized inputs otherwise. Activation format None: fp32 inputs (for intermediate_activation, "
      "Qt: the branch's intermediate T not quantized, the paper's formula).")
      .def(
          "__init__",
          [](QuantizedLinearKernel* self, const PackedMatrix& residual, const PackedMatrix* down, const PackedMatrix* up,
             std::optional<FloatArray> smooth, std::optional<FloatArray> bias,
             const std::optional<std::string>& residual_activation, const std::optional<std::string>& branch_activation,
             const std::string& name, const std::optional<std::string>& intermediate_activation) {
            const QuantizedLayer layer = layer_of(residual, down, up, smooth, name);
            const std::vector<float> b = vector_of(bias, name + ": bias");
            const LayerActivations activations{format_or_fp32(residual_activation), format_or_fp32(branch_activation),
                                               format_or_fp32(intermediate_activation)};
            new (self) QuantizedLinearKernel(layer, activations, b, name);
          },
          nb::arg("residual"), nb::arg("down").none() = nb::none(), nb::arg("up").none() = nb::none(),
          nb::arg("smooth").noconvert().none() = nb::none(), nb::arg("bias").noconvert().none() = nb::none(),
          nb::arg("residual_activation").none() = nb::none(), nb::arg("branch_activation").none() = nb::none(),
          nb::arg("name") = "layer", nb::arg("intermediate_activation").none() = nb::none())
      .def(
          "intermediate",
          [](const QuantizedLinearKernel& k, const FloatArray& x, int threads, std::optional<std::string> isa) {
            const std::int64_t rows = input_rows(k, x, "LinearKernel.intermediate");
            const LinearKernelOptions options = kernel_options(threads, isa);
            std::vector<float> t;
            {
              nb::gil_scoped_release release;
              t = k.intermediate(values_of(x), rows, options);
            }
            std::span<float> out;
            NumpyArray<float> result = uninitialized_numpy<float>({std::size_t(rows), std::size_t(k.rank())}, out);
            std::copy(t.begin(), t.end(), out.begin());
            return result;
          },
          nb::arg("x").noconvert(), nb::arg("threads") = 0, nb::arg("isa").none() = nb::none(),
          "T = Qa2(X/s) down^T [rows, rank] as forward() computes it in fp32, before intermediate_activation "
          "quantizes it ([rows, 0] without a branch).")
      .def(
          "forward",
          [](const QuantizedLinearKernel& k, const FloatArray& x, int threads, std::optional<std::string> isa,
             bool skip_branch) {
            const std::int64_t rows = input_rows(k, x, "LinearKernel.forward");
            LinearKernelOptions options = kernel_options(threads, isa);
            options.skip_branch = skip_branch;
            std::span<float> y;
            NumpyArray<float> result = uninitialized_numpy<float>({std::size_t(rows), std::size_t(k.out_features())}, y);
            {
              nb::gil_scoped_release release;
              k.forward(values_of(x), rows, y, options);  // writes every value (or throws)
            }
            return result;
          },
          nb::arg("x").noconvert(), nb::arg("threads") = 0, nb::arg("isa").none() = nb::none(),
          nb::arg("skip_branch") = false, "y [rows, out] for C-contiguous float32 x [rows, in] (or one row).")
      .def_prop_ro("in_features", &QuantizedLinearKernel::in_features)
      .def_prop_ro("out_features", &QuantizedLinearKernel::out_features)
      .def_prop_ro("rank", &QuantizedLinearKernel::rank)
      .def("describe", [](const QuantizedLinearKernel& k) { return k.describe(); },
           "What forward() runs for each part, e.g. 'residual integer sint4 x mxint8 (avx2); ...'");

  nb::class_<cuda::LinearKernel>(
      m, "CudaLinearKernel",
      "The same layer on a GPU's INT8 tensor cores (loraq/cuda.hpp; bit for bit the CPU integer path): integer "
      "weights with sint4, mxint4 or mxint8 activations, the branch's intermediate in fp32. Construction "
      "raises loraq.Error for other formats, without a GPU, or in a build without CUDA.")
      .def(
          "__init__",
          [](cuda::LinearKernel* self, const PackedMatrix& residual, const PackedMatrix* down, const PackedMatrix* up,
             std::optional<FloatArray> smooth, std::optional<FloatArray> bias, const std::string& residual_activation,
             const std::optional<std::string>& branch_activation, const std::string& name, int device) {
            const QuantizedLayer layer = layer_of(residual, down, up, smooth, name);
            const std::vector<float> b = vector_of(bias, name + ": bias");
            const Format qa1 = parse_format(residual_activation);
            const std::optional<Format> qa2 = format_or_fp32(branch_activation);
            nb::gil_scoped_release release;  // uploading the weights
            new (self) cuda::LinearKernel(layer, qa1, qa2, b, name, device);
          },
          nb::arg("residual"), nb::arg("down").none() = nb::none(), nb::arg("up").none() = nb::none(),
          nb::arg("smooth").noconvert().none() = nb::none(), nb::arg("bias").noconvert().none() = nb::none(),
          nb::arg("residual_activation"), nb::arg("branch_activation").none() = nb::none(),
          nb::arg("name") = "layer", nb::arg("device") = 0)
      .def(
          "forward_device",
          [](const cuda::LinearKernel& k, std::uintptr_t x, std::int64_t rows, std::uintptr_t y, std::uintptr_t stream,
             bool skip_branch) {
            nb::gil_scoped_release release;
            k.forward_device(reinterpret_cast<const float*>(x), rows, reinterpret_cast<float*>(y), stream, skip_branch);
          },
          nb::arg("x"), nb::arg("rows"), nb::arg("y"), nb::arg("stream"), nb::arg("skip_branch") = false,
          "y [rows, out] for x [rows, in], float32 row-major in this kernel's GPU memory, given as addresses "
          "(torch: tensor.data_ptr()), queued on the CUDA stream `stream` (torch: stream.cuda_stream) without "
          "waiting for it.")
      .def_prop_ro("device", &cuda::LinearKernel::device)
      .def_static("supports", [](const std::string& weight, const std::string& activation) {
            return cuda::LinearKernel::supports(parse_format(weight), parse_format(activation));
          }, nb::arg("weight"), nb::arg("activation"),
          "Whether the GPU kernels take this weight format with this activation format.");
}

}  // namespace loraq::python
