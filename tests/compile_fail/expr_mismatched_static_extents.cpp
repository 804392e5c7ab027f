// Must not compile: operands whose static extents differ can never describe the same shape.
#include "tmoe/core/expr.hpp"

int main() {
  float a[32] = {}, b[64] = {};
  tmoe::TensorView<const float, tmoe::Extents<4, 8>> va(a, tmoe::Extents<4, 8>());
  tmoe::TensorView<const float, tmoe::Extents<4, 16>> vb(b, tmoe::Extents<4, 16>());
  auto e = va + vb;
  return static_cast<int>(e.shape()[0]);
}
