// Must not compile: a view of a temporary owner would dangle at the end of the statement.
#include "tmoe/core/tensor.hpp"

tmoe::Matrix<float> make() { return tmoe::Matrix<float>(2, 2); }

int main() {
  auto v = make().view();
  return static_cast<int>(v.size());
}
