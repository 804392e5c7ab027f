#include <doctest/doctest.h>

#include <cstdint>
#include <type_traits>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/tensor.hpp"

using namespace tmoe;

TEST_CASE("Extents mix static and dynamic sizes") {
  using E = Extents<4, kDynamic, 8>;
  static_assert(E::kRank == 3 && E::kRankDynamic == 1);
  static_assert(sizeof(E) == sizeof(std::size_t));
  constexpr E e(5);
  static_assert(e.extent(0) == 4 && e.extent(1) == 5 && e.extent(2) == 8 && e.size() == 160);
  CHECK(E::matches({4, 9, 8}));
  CHECK_FALSE(E::matches({3, 9, 8}));
  CHECK(E::from_all({4, 9, 8}).extent(1) == 9);
  static_assert(extents_compatible_v<Extents<4, kDynamic>, Extents<kDynamic, 7>>);
  static_assert(!extents_compatible_v<Extents<4, kDynamic>, Extents<5, 7>>);
  static_assert(!extents_compatible_v<Extents<4>, Extents<4, 4>>);
}

TEST_CASE("Tensor is aligned, row-major and hands out views") {
  Matrix<float> m(3, 5);
  CHECK(reinterpret_cast<std::uintptr_t>(m.data()) % kAlignment == 0);
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 5; ++j) m(i, j) = float(10 * i + j);
  CHECK(m.row(2)[4] == 24.f);
  MatrixView<float> v = m.view();
  CHECK(v.is_contiguous());
  CHECK(v.stride(0) == 5);
  MatrixView<const float> c = v;  // const conversion
  CHECK(c(1, 3) == 13.f);
  auto r = c.row_range(1, 2);
  CHECK(r.rows() == 2);
  CHECK(r(0, 0) == 10.f);
  // A strided column view: not contiguous.
  MatrixView<const float> col(m.data() + 2, DExtents<2>(3, 1), {5, 1});
  CHECK(col(2, 0) == 22.f);
  TensorView<const float, DExtents<2>> t(m.data(), DExtents<2>(5, 3), {1, 5});  // transpose
  CHECK_FALSE(t.is_contiguous());
  CHECK(t(4, 2) == 24.f);
  Matrix<float> m2 = m.clone();
  CHECK(m2(2, 4) == 24.f);
  Tensor<bf16, Extents<kDynamic, 4>> b(Extents<kDynamic, 4>(2), bf16::from_float(1.5f));
  CHECK(b(1, 3).to_float() == 1.5f);
  static_assert(std::is_trivially_copyable_v<MatrixView<bf16>>);
  static_assert(!std::is_copy_constructible_v<Matrix<float>>);
}

TEST_CASE("check_shape names the op, the tensor and both shapes") {
  Matrix<float> m(3, 5);
  CHECK_NOTHROW(check_shape(m.cview(), {3, 5}, "linear", "weight"));
  CHECK_THROWS_WITH(check_shape(m.cview(), {3, 4}, "linear", "weight"),
                    "[linear] weight: expected shape [3,4], got [3,5]");
}
