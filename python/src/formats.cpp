// Block formats from Python: the format table, fake_quant, pack and unpack (loraq/format.hpp).
#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "loraq/error.hpp"
#include "loraq/format.hpp"

namespace loraq::python {
namespace {

// The same keys and words as `loraq formats --json` (tools/cli/cmd_formats.cpp).
nb::dict format_dict(const FormatInfo& f, std::optional<std::int64_t> row_length) {
  const ElementInfo& e = element_info(f.element);
  nb::dict d;
  d["name"] = std::string(f.name);
  d["element"] = std::string(e.name);
  d["element_bits"] = e.bits;
  d["block_size"] = f.block_size;
  d["scale"] = std::string(scale_name(f));
  d["scale_bytes"] = scale_bytes(f.format);
  d["tensor_scale"] = f.tensor_scale;
  d["bits_per_value"] = nominal_bits_per_value(f.format);
  if (row_length) {
    if (*row_length < 1) throw Error("row_length must be >= 1, got " + std::to_string(*row_length));
    d["row_length"] = *row_length;
    d["bits_per_value_at_row_length"] = bits_per_value(f.format, *row_length);
  }
  d["element_max"] = e.max_value;
  d["description"] = std::string(f.description);
  return d;
}

QuantOptions options_of(const std::string& rounding, int threads, const std::optional<std::string>& isa) {
  QuantOptions o;
  o.rounding = parse_rounding(rounding);
  if (threads < 0) throw Error("threads must be >= 0 (0: every core), got " + std::to_string(threads));
  o.threads = threads;
  if (isa) {
    o.isa = parse_isa(*isa);
    if (!isa_available(*o.isa)) throw Error("instruction set '" + *isa + "' is not available on this CPU or build");
  }
  return o;
}

// Returns the new array, or None when the values went to `out`.
std::optional<NumpyArray<float>> fake_quant(const FloatArray& x, const std::string& format, const std::string& rounding,
                      std::optional<FloatOut> out, int threads, const std::optional<std::string>& isa) {
  const Format f = parse_format(format);
  const MatrixShape s = matrix_shape(x, "fake_quant");
  const QuantOptions options = options_of(rounding, threads, isa);
  if (out) {
    bool same_shape = out->ndim() == x.ndim();
    for (std::size_t i = 0; same_shape && i < x.ndim(); ++i) same_shape = out->shape(i) == x.shape(i);
    if (!same_shape) throw Error("fake_quant: out= must have the input's shape " + shape_text(x));
    {
      nb::gil_scoped_release release;
      require_finite(values_of(x), s.cols, "fake_quant: the array");
      fake_quantize(f, values_of(x), {out->data(), out->size()}, s.rows, s.cols, options);  // may alias x
    }
    return std::nullopt;
  }
  std::vector<float> result(x.size());
  {
    nb::gil_scoped_release release;
    require_finite(values_of(x), s.cols, "fake_quant: the array");
    fake_quantize(f, values_of(x), result, s.rows, s.cols, options);
  }
  if (x.ndim() == 1) return to_numpy(std::move(result), {std::size_t(s.cols)});
  return to_numpy(std::move(result), {std::size_t(s.rows), std::size_t(s.cols)});
}

PackedMatrix pack_array(const FloatArray& x, const std::string& format, const std::string& rounding, int threads,
                        const std::optional<std::string>& isa) {
  const Format f = parse_format(format);
  const MatrixShape s = matrix_shape(x, "pack");
  const QuantOptions options = options_of(rounding, threads, isa);
  nb::gil_scoped_release release;
  require_finite(values_of(x), s.cols, "pack: the array");
  return pack(f, values_of(x), s.rows, s.cols, options);
}

// The non-negative finite values of an element encoding, in code order (which is value order), with
// the exponent the MX shared scale uses and whether a negative zero exists. loraq.torch's device codec
// rounds to this set, so the C++ table stays the one definition of every element.
nb::dict element_grid(const std::string& name) {
  const auto elements = all_elements();
  const auto it = std::find_if(elements.begin(), elements.end(), [&](const ElementInfo& e) { return e.name == name; });
  if (it == elements.end()) {
    std::string known;
    for (const ElementInfo& e : elements) known += (known.empty() ? "" : ", ") + std::string(e.name);
    throw Error("unknown element '" + name + "': expected one of " + known);
  }
  if (it->element == Element::e8m0) throw Error("element 'e8m0' is a scale (unsigned powers of two), not a value grid");
  std::vector<float> values;
  for (std::uint32_t code = 0; code < (1u << (it->bits - 1)); ++code) {
    const float v = decode(it->element, code);
    if (!std::isfinite(v)) break;  // Inf or NaN: the codes above them are not values
    values.push_back(v);
  }
  const std::uint32_t negative_zero_code = 1u << (it->bits - 1);
  const float negative_zero = decode(it->element, negative_zero_code);
  nb::dict d;
  d["element"] = std::string(it->name);
  d["emax"] = it->emax;
  d["signed_zero"] = negative_zero == 0.0f && std::signbit(negative_zero);
  const std::size_t count = values.size();
  d["values"] = to_numpy(std::move(values), {count});
  return d;
}

NumpyArray<float> unpack_matrix(const PackedMatrix& p, int threads, const std::optional<std::string>& isa) {
  const QuantOptions options = options_of("nearest_even", threads, isa);
  std::vector<float> result(std::size_t(p.rows * p.cols));
  {
    nb::gil_scoped_release release;
    unpack(p, result, options);
  }
  return to_numpy(std::move(result), {std::size_t(p.rows), std::size_t(p.cols)});
}

std::size_t scale_row_bytes(const PackedMatrix& p) {
  return std::size_t(blocks_per_row(p.format, p.cols) * scale_bytes(p.format));
}

// A packed matrix from codes and scales read elsewhere (a checkpoint), checked against the layout.
PackedMatrix make_packed(const std::string& format, std::int64_t rows, std::int64_t cols,
                         const nb::ndarray<const std::uint8_t, nb::c_contig, nb::device::cpu>& codes,
                         const nb::ndarray<const std::uint8_t, nb::c_contig, nb::device::cpu>& scales,
                         float tensor_scale) {
  PackedMatrix p;
  p.format = parse_format(format);
  if (rows < 0 || cols < 0)
    throw Error("PackedMatrix: rows and cols must be >= 0, got " + std::to_string(rows) + " x " + std::to_string(cols));
  p.rows = rows;
  p.cols = cols;
  // Checked: 2^40 x 2^40 wrapped to 0 bytes and was accepted with empty arrays.
  std::int64_t code_bytes = 0, scale_bytes_total = 0;
  if (cols > (std::int64_t(1) << 40) || __builtin_mul_overflow(rows, packed_row_bytes(p.format, cols), &code_bytes) ||
      __builtin_mul_overflow(rows, std::int64_t(scale_row_bytes(p)), &scale_bytes_total))
    throw Error("PackedMatrix: " + format + " " + std::to_string(rows) + " x " + std::to_string(cols) +
                " is too large to address");
  const auto want_codes = std::size_t(code_bytes), want_scales = std::size_t(scale_bytes_total);
  if (codes.size() != want_codes)
    throw Error("PackedMatrix: " + format + " codes of " + std::to_string(rows) + " x " + std::to_string(cols) +
                " take " + std::to_string(want_codes) + " bytes, got " + std::to_string(codes.size()));
  if (scales.size() != want_scales)
    throw Error("PackedMatrix: " + format + " scales of " + std::to_string(rows) + " x " + std::to_string(cols) +
                " take " + std::to_string(want_scales) + " bytes, got " + std::to_string(scales.size()));
  p.codes.assign(codes.data(), codes.data() + codes.size());
  p.scales.assign(scales.data(), scales.data() + scales.size());
  p.tensor_scale = format_info(p.format).tensor_scale ? tensor_scale : 1.0f;
  return p;
}

}  // namespace

void register_formats(nb::module_& m) {
  m.def(
      "formats",
      [](std::optional<std::int64_t> row_length) {
        nb::typed<nb::list, nb::dict> out;
        for (const FormatInfo& f : all_formats()) out.append(format_dict(f, row_length));
        return out;
      },
      nb::arg("row_length") = nb::none(),
      "Every block format as a dict (the keys of `loraq formats --json`); with row_length, also the bits per "
      "value at that row length (a partial last block pays a whole scale).");
  m.def(
      "format_info",
      [](const std::string& name, std::optional<std::int64_t> row_length) {
        return format_dict(format_info(parse_format(name)), row_length);
      },
      nb::arg("name"), nb::arg("row_length") = nb::none(), "One block format as a dict; raises Error for unknown names.");

  nb::class_<PackedMatrix>(m, "PackedMatrix",
                           "Element codes and scales in the byte layout of FORMATS.md \"Packed storage\".")
      .def("__init__",
           [](PackedMatrix* self, const std::string& format, std::int64_t rows, std::int64_t cols,
              const nb::ndarray<const std::uint8_t, nb::c_contig, nb::device::cpu>& codes,
              const nb::ndarray<const std::uint8_t, nb::c_contig, nb::device::cpu>& scales, float tensor_scale) {
             new (self) PackedMatrix(make_packed(format, rows, cols, codes, scales, tensor_scale));
           },
           nb::arg("format"), nb::arg("rows"), nb::arg("cols"), nb::arg("codes").noconvert(),
           nb::arg("scales").noconvert(), nb::arg("tensor_scale") = 1.0f,
           "Codes and scales (uint8, any shape, C order) read from elsewhere; their sizes are checked.")
      .def_prop_ro("format", [](const PackedMatrix& p) { return std::string(format_info(p.format).name); })
      .def_ro("rows", &PackedMatrix::rows)
      .def_ro("cols", &PackedMatrix::cols, "logical columns; packed rows are padded to whole blocks")
      .def_ro("tensor_scale", &PackedMatrix::tensor_scale, "nvfp4's per-tensor fp32 scale; 1 for every other format")
      .def_prop_ro(
          "codes",
          [](const PackedMatrix& p) {
            return NumpyArray<const std::uint8_t>(p.codes.data(),
                                                  {std::size_t(p.rows), std::size_t(packed_row_bytes(p.format, p.cols))});
          },
          nb::rv_policy::reference_internal, "uint8 [rows, packed row bytes], read-only, a view of this object")
      .def_prop_ro(
          "scales",
          [](const PackedMatrix& p) {
            return NumpyArray<const std::uint8_t>(p.scales.data(), {std::size_t(p.rows), scale_row_bytes(p)});
          },
          nb::rv_policy::reference_internal,
          "uint8 [rows, blocks per row x scale bytes] (little-endian scales), read-only, a view of this object")
      .def_prop_ro(
          "nbytes",
          [](const PackedMatrix& p) {
            return p.codes.size() + p.scales.size() + (format_info(p.format).tensor_scale ? sizeof(float) : 0);
          },
          "stored bytes: codes, scales and nvfp4's tensor scale")
      .def("__repr__", [](const PackedMatrix& p) {
        return "PackedMatrix(format='" + std::string(format_info(p.format).name) + "', rows=" + std::to_string(p.rows) +
               ", cols=" + std::to_string(p.cols) + ")";
      });

  m.def("fake_quant", &fake_quant, nb::arg("x").noconvert(), nb::arg("format"), nb::arg("rounding") = "nearest_even",
        nb::arg("out").noconvert() = nb::none(), nb::arg("threads") = 0, nb::arg("isa") = nb::none(),
        "The values x quantizes to in `format`, blocks along the last axis of a C-contiguous float32 array "
        "(1-D or 2-D): a new array, or None when out= (which may be x itself) receives the values.");
  m.def("pack", &pack_array, nb::arg("x").noconvert(), nb::arg("format"), nb::arg("rounding") = "nearest_even",
        nb::arg("threads") = 0, nb::arg("isa") = nb::none(),
        "Codes and scales of x in `format` (a 1-D array is one row).");
  m.def("element_grid", &element_grid, nb::arg("element"),
        "An element encoding's non-negative finite values in code order (float32), its MX emax, and whether it "
        "has -0: what loraq.torch's device codec rounds to.");
  m.def("unpack", &unpack_matrix, nb::arg("packed"), nb::arg("threads") = 0, nb::arg("isa") = nb::none(),
        "The float32 values [rows, cols] of a packed matrix: unpack(pack(x)) == fake_quant(x) bit for bit.");
}

}  // namespace loraq::python
