// The methods' entry points, one file each; the table in method_table.cpp lists them.
#pragma once

#include "loraq/methods.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq::methods {

QuantizedLayer rtn(const LayerInput& input);

}  // namespace loraq::methods
