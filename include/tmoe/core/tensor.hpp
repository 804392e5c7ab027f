// tmoe/core/tensor.hpp: TensorView (non-owning, trivially copyable, strided) and Tensor (owning,
// 64-byte aligned, contiguous row-major).
//
// Layout convention: row-major, the last index fastest. Weights are stored [out, in] exactly as
// in PyTorch checkpoints (y = x W^T). Strides are in elements. A view never owns memory and is
// passed by value; an owner hands out views with view() / cview(). Expressions hold views only:
// building one from a temporary Tensor is deleted, so `auto e = make() + x;` cannot dangle.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "tmoe/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/extents.hpp"

namespace tmoe {

template <class Ext>
std::string shape_string(const Ext& e) {
  std::ostringstream os;
  os << '[';
  for (std::size_t r = 0; r < Ext::kRank; ++r) os << (r ? "," : "") << e.extent(r);
  os << ']';
  return os.str();
}

template <class T, class Ext = DExtents<2>>
class TensorView {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using extents_type = Ext;
  static constexpr std::size_t kRank = Ext::kRank;
  using Strides = std::array<std::ptrdiff_t, kRank>;

  constexpr TensorView() = default;

  // Contiguous row-major view.
  TMOE_HOST_DEVICE constexpr TensorView(T* data, Ext ext) : data_(data), ext_(ext) {
    std::ptrdiff_t s = 1;
    for (std::size_t r = kRank; r-- > 0;) {
      strides_[r] = s;
      s *= static_cast<std::ptrdiff_t>(ext_.extent(r));
    }
  }
  TMOE_HOST_DEVICE constexpr TensorView(T* data, Ext ext, Strides strides)
      : data_(data), ext_(ext), strides_(strides) {}

  // Contiguous view with the dynamic extents given in order, e.g. MatrixView<float>(p, rows, cols).
  template <class... Is>
    requires(sizeof...(Is) == Ext::kRankDynamic && sizeof...(Is) > 0 &&
             (std::is_integral_v<Is> && ...))
  TMOE_HOST_DEVICE constexpr TensorView(T* data, Is... dyn) : TensorView(data, Ext(dyn...)) {}

  // A view of const T from a view of T.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  TMOE_HOST_DEVICE constexpr TensorView(const TensorView<U, Ext>& o)
      : data_(o.data()), ext_(o.extents()), strides_(o.strides()) {}

  TMOE_HOST_DEVICE constexpr T* data() const { return data_; }
  TMOE_HOST_DEVICE constexpr const Ext& extents() const { return ext_; }
  TMOE_HOST_DEVICE constexpr const Strides& strides() const { return strides_; }
  TMOE_HOST_DEVICE constexpr std::size_t extent(std::size_t r) const { return ext_.extent(r); }
  TMOE_HOST_DEVICE constexpr std::ptrdiff_t stride(std::size_t r) const { return strides_[r]; }
  TMOE_HOST_DEVICE constexpr std::size_t size() const { return ext_.size(); }
  TMOE_HOST_DEVICE constexpr bool empty() const { return size() == 0; }
  TMOE_HOST_DEVICE constexpr std::size_t rows() const requires(kRank == 2) { return extent(0); }
  TMOE_HOST_DEVICE constexpr std::size_t cols() const requires(kRank == 2) { return extent(1); }

  TMOE_HOST_DEVICE constexpr bool is_contiguous() const {
    std::ptrdiff_t s = 1;
    for (std::size_t r = kRank; r-- > 0;) {
      if (extent(r) != 1 && strides_[r] != s) return false;
      s *= static_cast<std::ptrdiff_t>(extent(r));
    }
    return true;
  }

  template <class... Is>
    requires(sizeof...(Is) == kRank)
  TMOE_HOST_DEVICE constexpr T& operator()(Is... idx) const {
    const std::array<std::ptrdiff_t, kRank> i{static_cast<std::ptrdiff_t>(idx)...};
    std::ptrdiff_t off = 0;
    for (std::size_t r = 0; r < kRank; ++r) off += i[r] * strides_[r];
    return data_[off];
  }

  // Pointer to the start of row i of a rank-2 view (rows are contiguous when stride(1) == 1).
  TMOE_HOST_DEVICE constexpr T* row(std::size_t i) const requires(kRank == 2) {
    return data_ + static_cast<std::ptrdiff_t>(i) * strides_[0];
  }

  // Rows [begin, begin + count) of a rank-2 view.
  TMOE_HOST_DEVICE constexpr TensorView<T, DExtents<2>> row_range(std::size_t begin,
                                                                  std::size_t count) const
    requires(kRank == 2)
  {
    return TensorView<T, DExtents<2>>(data_ + static_cast<std::ptrdiff_t>(begin) * strides_[0],
                                      DExtents<2>(count, extent(1)), {strides_[0], strides_[1]});
  }

  // The flat contiguous span (precondition: is_contiguous()).
  std::span<T> span() const {
    TMOE_ASSERT(is_contiguous());
    return {data_, size()};
  }

 private:
  T* data_ = nullptr;
  Ext ext_{};
  Strides strides_{};
};

template <class T>
using VectorView = TensorView<T, DExtents<1>>;
template <class T>
using MatrixView = TensorView<T, DExtents<2>>;

static_assert(std::is_trivially_copyable_v<MatrixView<float>>);

// Checks at an API boundary that a view has the expected run-time shape.
template <class T, class Ext>
void check_shape(const TensorView<T, Ext>& v, const std::array<std::size_t, Ext::kRank>& want,
                 std::string_view op, std::string_view name) {
  if (v.extents().all() != want) {
    Ext w = Ext::from_all(want);
    fail(op, name, ": expected shape ", shape_string(w), ", got ", shape_string(v.extents()));
  }
}

namespace detail {
struct AlignedDelete {
  void operator()(void* p) const { ::operator delete[](p, std::align_val_t{kAlignment}); }
};
}  // namespace detail

// Owning, contiguous, row-major, kAlignment-aligned storage. Move-only. Default-initialized
// (not zeroed) unless constructed with a fill value.
template <class T, class Ext = DExtents<2>>
class Tensor {
 public:
  using value_type = T;
  using extents_type = Ext;
  static constexpr std::size_t kRank = Ext::kRank;

  Tensor() = default;
  explicit Tensor(Ext ext) : ext_(ext), data_(allocate(ext.size())) {}
  Tensor(Ext ext, T fill) : Tensor(ext) {
    for (std::size_t i = 0; i < size(); ++i) data()[i] = fill;
  }
  template <class... Is>
    requires(sizeof...(Is) == Ext::kRankDynamic && sizeof...(Is) > 0 &&
             (std::is_integral_v<Is> && ...))
  explicit Tensor(Is... dyn) : Tensor(Ext(dyn...)) {}

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  Tensor clone() const {
    Tensor t(ext_);
    if (size()) std::memcpy(t.data(), data(), size() * sizeof(T));
    return t;
  }

  T* data() { return static_cast<T*>(data_.get()); }
  const T* data() const { return static_cast<const T*>(data_.get()); }
  const Ext& extents() const { return ext_; }
  std::size_t extent(std::size_t r) const { return ext_.extent(r); }
  std::size_t size() const { return data_ ? ext_.size() : 0; }
  std::size_t rows() const requires(kRank == 2) { return extent(0); }
  std::size_t cols() const requires(kRank == 2) { return extent(1); }
  T* row(std::size_t i) requires(kRank == 2) { return data() + i * extent(1); }
  const T* row(std::size_t i) const requires(kRank == 2) { return data() + i * extent(1); }

  template <class... Is>
    requires(sizeof...(Is) == kRank)
  T& operator()(Is... idx) { return view()(idx...); }
  template <class... Is>
    requires(sizeof...(Is) == kRank)
  const T& operator()(Is... idx) const { return cview()(idx...); }

  TensorView<T, Ext> view() & { return {data(), ext_}; }
  TensorView<const T, Ext> view() const& { return {data(), ext_}; }
  TensorView<const T, Ext> cview() const& { return {data(), ext_}; }
  // A view of a temporary owner would dangle at the end of the full expression.
  TensorView<T, Ext> view() && = delete;
  TensorView<const T, Ext> cview() const&& = delete;

  std::span<T> span() { return {data(), size()}; }
  std::span<const T> span() const { return {data(), size()}; }

 private:
  static std::unique_ptr<void, detail::AlignedDelete> allocate(std::size_t n) {
    if (n == 0) return {};
    void* p = ::operator new[](n * sizeof(T), std::align_val_t{kAlignment});
    return std::unique_ptr<void, detail::AlignedDelete>(p);
  }
  Ext ext_{};
  std::unique_ptr<void, detail::AlignedDelete> data_;
};

template <class T>
using Vector = Tensor<T, DExtents<1>>;
template <class T>
using Matrix = Tensor<T, DExtents<2>>;

}  // namespace tmoe
