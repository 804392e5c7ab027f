// Must not compile: an expression over a temporary Tensor would dangle after the statement.
#include "tmoe/core/expr.hpp"

tmoe::Vector<float> make() {
  return tmoe::Vector<float>(tmoe::DExtents<1>(4), 1.0f);
}

int main() {
  tmoe::Vector<float> x(tmoe::DExtents<1>(4), 2.0f), y(4);
  auto e = make() + x.cview();
  tmoe::assign(y.view(), e);
  return 0;
}
