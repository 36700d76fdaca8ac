// The methods' entry points, one file each; the table in method_table.cpp lists them.
#pragma once

#include "loraq/methods.hpp"
#include "loraq/quantized_layer.hpp"

namespace loraq::methods {

QuantizedLayer rtn(const LayerInput& input);
// The SVD-based baselines, one file each (their shared steps: low_rank_branch.hpp).
QuantizedLayer svd_lowrank(const LayerInput& input);
QuantizedLayer lorc(const LayerInput& input);
QuantizedLayer loftq(const LayerInput& input);
// The paper's method: loraq.cpp (its pieces: loraq_impl.hpp).
QuantizedLayer loraq(const LayerInput& input);

}  // namespace loraq::methods
