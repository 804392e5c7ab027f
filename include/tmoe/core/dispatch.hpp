// tmoe/core/dispatch.hpp: the one bridge from a run-time value to a compile-time constant.
//
//   dispatch<kHeadDims>("gqa_attention", "head_dim", cfg.head_dim, [&](auto hd) {
//     attention_kernel<decltype(hd)::value>(...);
//   });
//
// The candidate sets are ValueLists declared in one header (core/compiled_sets.hpp) so the number
// of instantiations stays small and visible. A value outside the set is a tmoe::Error that names
// the op, the parameter, the value and the supported set.
#pragma once

#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "tmoe/core/error.hpp"

namespace tmoe {

template <auto... Vs>
struct ValueList {
  static constexpr std::size_t size = sizeof...(Vs);
  template <class T>
  static constexpr bool contains(T v) {
    return ((static_cast<T>(Vs) == v) || ...);
  }
  static std::string to_string() {
    std::ostringstream os;
    os << '{';
    bool first = true;
    ((os << (first ? "" : ", ") << +Vs, first = false), ...);
    os << '}';
    return os.str();
  }
};

namespace detail {
template <auto V, auto... Rest, class T, class F>
decltype(auto) dispatch_impl(T value, F&& f, bool& found) {
  if (static_cast<T>(V) == value) {
    found = true;
    return std::forward<F>(f)(std::integral_constant<decltype(V), V>{});
  }
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch_impl<Rest...>(value, std::forward<F>(f), found);
  } else {
    using R = decltype(std::forward<F>(f)(std::integral_constant<decltype(V), V>{}));
    if constexpr (std::is_void_v<R>) return;
    else return R{};
  }
}
template <class List>
struct dispatcher;
template <auto V0, auto... Vs>
struct dispatcher<ValueList<V0, Vs...>> {
  template <class T, class F>
  static decltype(auto) run(std::string_view op, std::string_view what, T value, F&& f) {
    bool found = false;
    using R = decltype(std::forward<F>(f)(std::integral_constant<decltype(V0), V0>{}));
    if constexpr (std::is_void_v<R>) {
      dispatch_impl<V0, Vs...>(value, std::forward<F>(f), found);
      if (!found) fail(op, "unsupported ", what, " ", +value, " (supported: ", ValueList<V0, Vs...>::to_string(), ")");
    } else {
      R r = dispatch_impl<V0, Vs...>(value, std::forward<F>(f), found);
      if (!found) fail(op, "unsupported ", what, " ", +value, " (supported: ", ValueList<V0, Vs...>::to_string(), ")");
      return r;
    }
  }
};
}  // namespace detail

// Calls f(std::integral_constant<..., V>{}) for the V in List equal to value; otherwise throws
// "[op] unsupported <what> <value> (supported: {...})". Every branch must return the same type.
template <class List, class T, class F>
decltype(auto) dispatch(std::string_view op, std::string_view what, T value, F&& f) {
  return detail::dispatcher<List>::run(op, what, value, std::forward<F>(f));
}

}  // namespace tmoe
