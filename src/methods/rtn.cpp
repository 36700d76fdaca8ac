// rtn: round to nearest, the baseline every method is measured against: the residual is Q1(W).
#include "methods.hpp"

namespace loraq::methods {

QuantizedLayer rtn(const LayerInput& input) {
  QuantizedLayer layer;
  layer.out_features = input.out_features;
  layer.in_features = input.in_features;
  layer.residual = pack(input.recipe->residual_format, input.weight, input.out_features, input.in_features, input.codec);
  return layer;
}

}  // namespace loraq::methods
