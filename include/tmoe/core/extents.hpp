// tmoe/core/extents.hpp: tensor shapes that mix compile-time and run-time sizes.
//
// Extents<7168, kDynamic> is a rank-2 shape whose first size is fixed at 7168 and whose second is
// chosen at run time; only the dynamic sizes are stored. Template the dims that drive tiling or
// unrolling (head dims, latent ranks, block sizes); keep model widths and counts dynamic.
// Combining two extents with different static sizes is a compile error (see compatible()).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tmoe/config.hpp"

namespace tmoe {

inline constexpr std::size_t kDynamic = static_cast<std::size_t>(-1);

template <std::size_t... Es>
class Extents {
 public:
  static constexpr std::size_t kRank = sizeof...(Es);
  static constexpr std::size_t kRankDynamic = ((Es == kDynamic ? 1 : 0) + ... + 0);
  static constexpr std::array<std::size_t, kRank> kStatic{Es...};

  // Dynamic extents default to 0.
  constexpr Extents() = default;

  // One value per dynamic extent, in order.
  template <class... Is>
    requires(sizeof...(Is) == kRankDynamic && kRankDynamic > 0 &&
             (std::is_convertible_v<Is, std::size_t> && ...))
  constexpr explicit Extents(Is... dyn) : dyn_{static_cast<std::size_t>(dyn)...} {}

  // Every extent given: static positions must agree (checked at run time by the caller
  // through matches()); dynamic positions are stored.
  static constexpr Extents from_all(const std::array<std::size_t, kRank>& all) {
    Extents e{Uninit{}};
    std::size_t d = 0;
    for (std::size_t r = 0; r < kRank; ++r)
      if (kStatic[r] == kDynamic) e.dyn_[d++] = all[r];
    return e;
  }

  static constexpr bool matches(const std::array<std::size_t, kRank>& all) {
    for (std::size_t r = 0; r < kRank; ++r)
      if (kStatic[r] != kDynamic && kStatic[r] != all[r]) return false;
    return true;
  }

  static constexpr std::size_t rank() { return kRank; }
  static constexpr std::size_t static_extent(std::size_t r) { return kStatic[r]; }
  static constexpr bool is_static(std::size_t r) { return kStatic[r] != kDynamic; }

  TMOE_HOST_DEVICE constexpr std::size_t extent(std::size_t r) const {
    if (kStatic[r] != kDynamic) return kStatic[r];
    return dyn_[dynamic_index(r)];
  }
  TMOE_HOST_DEVICE constexpr std::size_t size() const {
    std::size_t n = 1;
    for (std::size_t r = 0; r < kRank; ++r) n *= extent(r);
    return n;
  }
  constexpr std::array<std::size_t, kRank> all() const {
    std::array<std::size_t, kRank> a{};
    for (std::size_t r = 0; r < kRank; ++r) a[r] = extent(r);
    return a;
  }

  template <std::size_t... Fs>
  friend constexpr bool operator==(const Extents& a, const Extents<Fs...>& b) {
    if constexpr (sizeof...(Fs) != kRank) return false;
    else return a.all() == b.all();
  }

 private:
  struct Uninit {};
  constexpr explicit Extents(Uninit) : dyn_{} {}
  static constexpr std::size_t dynamic_index(std::size_t r) {
    std::size_t d = 0;
    for (std::size_t i = 0; i < r; ++i) d += kStatic[i] == kDynamic ? 1 : 0;
    return d;
  }
  std::array<std::size_t, kRankDynamic> dyn_{};
};

namespace detail {
template <std::size_t Rank, std::size_t... Es>
struct dextents_impl : dextents_impl<Rank - 1, kDynamic, Es...> {};
template <std::size_t... Es>
struct dextents_impl<0, Es...> {
  using type = Extents<Es...>;
};
}  // namespace detail

// All-dynamic extents of a given rank: DExtents<2> == Extents<kDynamic, kDynamic>.
template <std::size_t Rank>
using DExtents = typename detail::dextents_impl<Rank>::type;

// True when two static extent lists can describe the same shape: same rank, and every position
// where both are static holds the same size. Used in static_asserts of ops taking two tensors.
template <class A, class B>
struct extents_compatible;
template <std::size_t... As, std::size_t... Bs>
struct extents_compatible<Extents<As...>, Extents<Bs...>> {
  static constexpr bool value = [] {
    if constexpr (sizeof...(As) != sizeof...(Bs)) {
      return false;
    } else {
      constexpr std::array<std::size_t, sizeof...(As)> a{As...};
      constexpr std::array<std::size_t, sizeof...(Bs)> b{Bs...};
      for (std::size_t r = 0; r < a.size(); ++r)
        if (a[r] != kDynamic && b[r] != kDynamic && a[r] != b[r]) return false;
      return true;
    }
  }();
};
template <class A, class B>
inline constexpr bool extents_compatible_v = extents_compatible<A, B>::value;

}  // namespace tmoe
