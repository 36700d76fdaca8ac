// Shared pieces of the nanobind module loraq._core: array conversions and the registration
// functions (one file per part of the public API: formats, methods, checkpoints, recipes).
//
// Arrays come in as C-contiguous float32 numpy arrays without conversion (`noconvert`): the Python
// wrappers in python/loraq/ check dtype and shape and say what is wrong, so that no copy happens
// behind the user's back. Arrays go out as numpy arrays that own the C++ vector they were made from.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "loraq/accelerator.hpp"
#include "loraq/element.hpp"

namespace loraq::python {

namespace nb = nanobind;

// A read-only float32 input, rows x cols with blocks along the last axis.
using FloatArray = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
// A writable float32 destination (fake_quant's out=).
using FloatOut = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
template <class T>
using NumpyArray = nb::ndarray<nb::numpy, T>;

// A 1-D array is one row; a 2-D array is [rows, cols]. Anything else throws Error naming `what`
// and the shape.
struct MatrixShape {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
};
MatrixShape matrix_shape(const FloatArray& a, const std::string& what);
std::string shape_text(const FloatArray& a);

std::span<const float> values_of(const FloatArray& a);

// "nearest_even" or "nearest_away" (and the command line's "ties-even", "ties-away").
Rounding parse_rounding(const std::string& name);

// Throws Error naming `what` and the [row, col] of the first NaN or Inf: a non-finite value would
// poison a whole block (FORMATS.md, MX step 2), so loraq refuses it, as `loraq cast` does.
void require_finite(std::span<const float> values, std::int64_t cols, const std::string& what);

// Moves `values` into a numpy array of `shape` that owns them.
template <class T>
NumpyArray<T> to_numpy(std::vector<T>&& values, std::initializer_list<std::size_t> shape) {
  if (values.empty()) values.reserve(1);  // a valid data pointer even for an empty array
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return NumpyArray<T>(owned->data(), shape, owner);
}

// A numpy array of `shape` whose values the caller writes next (through `out`): unlike a
// std::vector, the memory is not zeroed first, on one thread, before a kernel that overwrites it.
template <class T>
NumpyArray<T> uninitialized_numpy(std::initializer_list<std::size_t> shape, std::span<T>& out) {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;
  T* values = new T[std::max<std::size_t>(n, 1)];  // default-initialized: no writes
  nb::capsule owner(values, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  out = std::span<T>(values, n);
  return NumpyArray<T>(values, shape, owner);
}

// The accelerator a device name ("cpu", "cuda", "cuda:N") gives: null for "cpu". Throws Error
// starting with `what` for a bad name, and naming the cause without a GPU or in a build without CUDA.
const Accelerator* accelerator_for(const std::string& device, const std::string& what);

void register_formats(nb::module_& m);
void register_methods(nb::module_& m);
void register_checkpoint(nb::module_& m);
void register_recipes(nb::module_& m);
void register_kernels(nb::module_& m);

}  // namespace loraq::python
