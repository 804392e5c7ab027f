#include <doctest/doctest.h>

#include "tmoe/core/compiled_sets.hpp"
#include "tmoe/core/dispatch.hpp"

using namespace tmoe;

TEST_CASE("dispatch turns a run-time value into a compile-time constant") {
  using L = ValueList<16, 32, 64>;
  for (int v : {16, 32, 64}) {
    const int got = dispatch<L>("op", "size", v, [](auto c) { return int(decltype(c)::value) + 1; });
    CHECK(got == v + 1);
  }
  bool called = false;
  dispatch<kHeadDims>("attn", "head_dim", 128, [&](auto c) {
    static_assert(decltype(c)::value == 64 || decltype(c)::value == 128);
    called = decltype(c)::value == 128;
  });
  CHECK(called);
  CHECK_THROWS_WITH(dispatch<L>("gqa", "head_dim", 96, [](auto) {}),
                    "[gqa] unsupported head_dim 96 (supported: {16, 32, 64})");
  CHECK(L::contains(32));
  CHECK_FALSE(L::contains(33));
}
