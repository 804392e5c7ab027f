// tmoe/core/expr.hpp: elementwise expression templates over views, evaluated in one pass.
//
//   assign(y, a * ew::silu(b) + 0.5f);            // y, a, b: views of float / bf16 / f16
//   assign(pool, h, x + ew::row_broadcast(bias));  // bias (cols) added to every row of x (rows,
//   cols)
//
// Operands: TensorViews (contiguous; a strided view must be materialized first), lvalue Tensors
// (taken as views), float scalars, and other expressions. Building an expression from a temporary
// Tensor does not compile (it would dangle), nor does combining two operands whose static extents
// differ; a run-time shape mismatch throws tmoe::Error naming both shapes.
// Nodes: + - * / (elementwise, scalar on either side), unary -, ew::exp, ew::rsqrt (1/sqrt, not the
// approximate instruction), ew::silu (x / (1 + e^-x)), ew::gelu_tanh (the tanh approximation:
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as in PyTorch's approximate="tanh"),
// ew::cast<T> (round every value to T's precision, e.g. to mimic a bf16 intermediate) and
// ew::row_broadcast(v). All arithmetic is float32; bf16 / f16 operands are widened on load and
// the destination's type is rounded to on store (round to nearest even).
//
// Evaluation: assign() runs ONE contiguous SIMD loop over the destination (one loop per row when
// a row broadcast is present), with a scalar tail, compiled in the including translation unit for
// xsimd::default_arch (that is, for the TU's -m flags; it is not routed through the per-ISA
// KernelTable; every SIMD function is a template on the architecture, so TUs built with
// different flags never share a symbol). assign(pool, ...) splits the same loop across a
// ThreadPool.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "tmoe/config.hpp"
#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/extents.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"

namespace tmoe {

namespace ew {

// Everything that touches SIMD registers is a template on the xsimd architecture A (defaulted
// to xsimd::default_arch at assign()), so translation units built for different -m flags never
// emit the same symbol with different instructions.
template <class A>
using Batch = xsimd::batch<float, A>;
template <class A>
inline constexpr std::size_t kLanes = Batch<A>::size;
// A dimension a row-broadcast operand leaves open.
inline constexpr std::size_t kAnyExtent = static_cast<std::size_t>(-2);

template <class T>
concept Element = std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// Loads L values of T as floats; stores L floats rounded to T.
template <class A, class T>
TMOE_INLINE Batch<A> load_as_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Batch<A>::load_unaligned(p);
  } else {
    alignas(64) float f[kLanes<A>];
    for (std::size_t j = 0; j < kLanes<A>; ++j) f[j] = to_float(p[j]);
    return Batch<A>::load_aligned(f);
  }
}
template <class A, class T>
TMOE_INLINE void store_from_float(T* p, const Batch<A>& b) {
  if constexpr (std::is_same_v<T, float>) {
    b.store_unaligned(p);
  } else {
    alignas(64) float f[kLanes<A>];
    b.store_aligned(f);
    for (std::size_t j = 0; j < kLanes<A>; ++j) p[j] = from_float<T>(f[j]);
  }
}

// ---- nodes ----------------------------------------------------------------------------------
// Every node has: kRank (0 for a scalar), extents_type (its static extents, or void), kRowBcast
// (contains a row broadcast), shape() (std::array of kRank extents; kAnyExtent where open), and
// value access at flat index i of the destination whose column is c: at(i, c) (scalar) and
// load<A>(i, c) (kLanes<A> consecutive values, never crossing a row when kRowBcast).

template <class T, class Ext>
struct Leaf {
  static constexpr std::size_t kRank = Ext::kRank;
  static constexpr bool kRowBcast = false;
  using extents_type = Ext;
  const T* p;
  Ext ext;
  explicit Leaf(TensorView<const T, Ext> v) : p(v.data()), ext(v.extents()) {
    check(v.is_contiguous(), "expr", "operand of shape ", shape_string(v.extents()),
          " is strided; materialize it into a contiguous tensor first");
  }
  std::array<std::size_t, kRank> shape() const { return ext.all(); }
  TMOE_INLINE float at(std::size_t i, std::size_t) const { return to_float(p[i]); }
  template <class A>
  TMOE_INLINE Batch<A> load(std::size_t i, std::size_t) const {
    return load_as_float<A>(p + i);
  }
};

struct Scalar {
  static constexpr std::size_t kRank = 0;
  static constexpr bool kRowBcast = false;
  using extents_type = void;
  float v;
  std::array<std::size_t, 0> shape() const { return {}; }
  TMOE_INLINE float at(std::size_t, std::size_t) const { return v; }
  template <class A>
  TMOE_INLINE Batch<A> load(std::size_t, std::size_t) const {
    return Batch<A>(v);
  }
};

// A vector (cols) read as a (any, cols) matrix: every row sees the same vector.
template <class T, class Ext>
struct RowBroadcast {
  static_assert(Ext::kRank == 1, "row_broadcast takes a vector");
  static constexpr std::size_t kRank = 2;
  static constexpr bool kRowBcast = true;
  using extents_type = Extents<kDynamic, Ext::kStatic[0]>;
  const T* p;
  std::size_t n;
  std::array<std::size_t, 2> shape() const { return {kAnyExtent, n}; }
  TMOE_INLINE float at(std::size_t, std::size_t c) const { return to_float(p[c]); }
  template <class A>
  TMOE_INLINE Batch<A> load(std::size_t, std::size_t c) const {
    return load_as_float<A>(p + c);
  }
};

template <class Op, class A>
struct Unary {
  static constexpr std::size_t kRank = A::kRank;
  static constexpr bool kRowBcast = A::kRowBcast;
  using extents_type = typename A::extents_type;
  A a;
  auto shape() const { return a.shape(); }
  TMOE_INLINE float at(std::size_t i, std::size_t c) const { return Op::apply(a.at(i, c)); }
  template <class A2>
  TMOE_INLINE Batch<A2> load(std::size_t i, std::size_t c) const {
    return Op::apply(a.template load<A2>(i, c));
  }
};

template <class E>
std::string shape_text(const E& e) {
  std::string s = "[";
  const auto sh = e.shape();
  for (std::size_t r = 0; r < sh.size(); ++r)
    s += (r ? "," : "") + (sh[r] == kAnyExtent ? std::string("*") : std::to_string(sh[r]));
  return s + "]";
}

template <class A, class B>
constexpr bool static_extents_compatible() {
  if constexpr (std::is_void_v<typename A::extents_type> ||
                std::is_void_v<typename B::extents_type>)
    return true;
  else
    return extents_compatible_v<typename A::extents_type, typename B::extents_type>;
}

template <class Op, class A, class B>
struct Binary {
  static_assert(A::kRank == 0 || B::kRank == 0 || A::kRank == B::kRank,
                "expr: operands have different ranks");
  static_assert(static_extents_compatible<A, B>(), "expr: operands have different static extents");
  static constexpr std::size_t kRank = A::kRank > B::kRank ? A::kRank : B::kRank;
  static constexpr bool kRowBcast = A::kRowBcast || B::kRowBcast;
  using extents_type = std::conditional_t<A::kRank == 0 || A::kRowBcast, typename B::extents_type,
                                          typename A::extents_type>;
  A a;
  B b;
  Binary(A a_, B b_) : a(a_), b(b_) {
    if constexpr (A::kRank != 0 && B::kRank != 0) {
      const auto sa = a.shape(), sb = b.shape();
      for (std::size_t r = 0; r < kRank; ++r)
        check(sa[r] == sb[r] || sa[r] == kAnyExtent || sb[r] == kAnyExtent, "expr",
              "shape mismatch: ", shape_text(a), " vs ", shape_text(b));
    }
  }
  std::array<std::size_t, kRank> shape() const {
    if constexpr (A::kRank == 0)
      return b.shape();
    else if constexpr (B::kRank == 0)
      return a.shape();
    else {
      auto s = a.shape();
      const auto sb = b.shape();
      for (std::size_t r = 0; r < kRank; ++r)
        if (s[r] == kAnyExtent) s[r] = sb[r];
      return s;
    }
  }
  TMOE_INLINE float at(std::size_t i, std::size_t c) const {
    return Op::apply(a.at(i, c), b.at(i, c));
  }
  template <class A2>
  TMOE_INLINE Batch<A2> load(std::size_t i, std::size_t c) const {
    return Op::apply(a.template load<A2>(i, c), b.template load<A2>(i, c));
  }
};

// ---- operations (each for float and for a batch) ----------------------------------------------
struct AddOp {
  template <class V>
  static TMOE_INLINE V apply(V a, V b) {
    return a + b;
  }
};
struct SubOp {
  template <class V>
  static TMOE_INLINE V apply(V a, V b) {
    return a - b;
  }
};
struct MulOp {
  template <class V>
  static TMOE_INLINE V apply(V a, V b) {
    return a * b;
  }
};
struct DivOp {
  template <class V>
  static TMOE_INLINE V apply(V a, V b) {
    return a / b;
  }
};
struct NegOp {
  template <class V>
  static TMOE_INLINE V apply(V a) {
    return -a;
  }
};
struct ExpOp {
  static TMOE_INLINE float apply(float a) { return std::exp(a); }
  template <class A>
  static TMOE_INLINE Batch<A> apply(Batch<A> a) {
    return xsimd::exp(a);
  }
};
struct RsqrtOp {
  static TMOE_INLINE float apply(float a) { return 1.0f / std::sqrt(a); }
  template <class A>
  static TMOE_INLINE Batch<A> apply(Batch<A> a) {
    return Batch<A>(1.0f) / xsimd::sqrt(a);
  }
};
struct SiluOp {  // x * sigmoid(x) = x / (1 + e^-x)
  static TMOE_INLINE float apply(float a) { return a / (1.0f + std::exp(-a)); }
  template <class A>
  static TMOE_INLINE Batch<A> apply(Batch<A> a) {
    return a / (Batch<A>(1.0f) + xsimd::exp(-a));
  }
};
struct GeluTanhOp {  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  static constexpr float kC = 0.7978845608028654f, kA = 0.044715f;
  static TMOE_INLINE float apply(float x) {
    return 0.5f * x * (1.0f + std::tanh(kC * (x + kA * x * x * x)));
  }
  template <class A>
  static TMOE_INLINE Batch<A> apply(Batch<A> x) {
    using V = Batch<A>;
    return V(0.5f) * x * (V(1.0f) + xsimd::tanh(V(kC) * (x + V(kA) * x * x * x)));
  }
};
template <class T>
struct CastOp {
  static TMOE_INLINE float apply(float a) { return round_to<T>(a); }
  template <class A>
  static TMOE_INLINE Batch<A> apply(Batch<A> a) {
    if constexpr (std::is_same_v<T, float>) {
      return a;
    } else {
      alignas(64) float f[kLanes<A>];
      a.store_aligned(f);
      for (std::size_t j = 0; j < kLanes<A>; ++j) f[j] = round_to<T>(f[j]);
      return Batch<A>::load_aligned(f);
    }
  }
};

// ---- operands -------------------------------------------------------------------------------
template <class E>
struct is_node : std::false_type {};
template <class T, class Ext>
struct is_node<Leaf<T, Ext>> : std::true_type {};
template <>
struct is_node<Scalar> : std::true_type {};
template <class T, class Ext>
struct is_node<RowBroadcast<T, Ext>> : std::true_type {};
template <class Op, class A>
struct is_node<Unary<Op, A>> : std::true_type {};
template <class Op, class A, class B>
struct is_node<Binary<Op, A, B>> : std::true_type {};

template <class X>
struct is_view : std::false_type {};
template <class T, class Ext>
struct is_view<TensorView<T, Ext>> : std::bool_constant<Element<std::remove_const_t<T>>> {};
template <class X>
struct is_tensor : std::false_type {};
template <class T, class Ext>
struct is_tensor<Tensor<T, Ext>> : std::bool_constant<Element<T>> {};

// A tensor-like operand (a node, a view or a Tensor); scalars only pair with one of these.
template <class X>
concept TensorOperand = is_node<std::remove_cvref_t<X>>::value ||
    is_view<std::remove_cvref_t<X>>::value || is_tensor<std::remove_cvref_t<X>>::value;
template <class X>
concept Operand = TensorOperand<X> || std::is_arithmetic_v<std::remove_cvref_t<X>>;

template <class E>
requires is_node<E>::value E to_node(const E& e) {
  return e;
}
template <class T, class Ext>
Leaf<std::remove_const_t<T>, Ext> to_node(const TensorView<T, Ext>& v) {
  return Leaf<std::remove_const_t<T>, Ext>(TensorView<const std::remove_const_t<T>, Ext>(v));
}
template <class T, class Ext>
Leaf<T, Ext> to_node(const Tensor<T, Ext>& t) {
  return Leaf<T, Ext>(t.cview());
}
// An expression must not refer to a temporary owner: it would dangle after the statement.
template <class T, class Ext>
void to_node(Tensor<T, Ext>&& t) = delete;
template <class X>
requires std::is_arithmetic_v<X> Scalar to_node(X x) {
  return Scalar{static_cast<float>(x)};
}

template <class X>
using node_t = decltype(to_node(std::declval<X>()));

template <class Op, class A, class B>
auto make_binary(A&& a, B&& b) {
  using NA = node_t<A>;
  using NB = node_t<B>;
  return Binary<Op, NA, NB>(to_node(std::forward<A>(a)), to_node(std::forward<B>(b)));
}
template <class Op, class A>
auto make_unary(A&& a) {
  using NA = node_t<A>;
  return Unary<Op, NA>{to_node(std::forward<A>(a))};
}

// ---- named functions ------------------------------------------------------------------------
template <TensorOperand A>
auto exp(A&& a) {
  return make_unary<ExpOp>(std::forward<A>(a));
}
template <TensorOperand A>
auto rsqrt(A&& a) {
  return make_unary<RsqrtOp>(std::forward<A>(a));
}
template <TensorOperand A>
auto silu(A&& a) {
  return make_unary<SiluOp>(std::forward<A>(a));
}
template <TensorOperand A>
auto gelu_tanh(A&& a) {
  return make_unary<GeluTanhOp>(std::forward<A>(a));
}
template <Element T, TensorOperand A>
auto cast(A&& a) {
  return make_unary<CastOp<T>>(std::forward<A>(a));
}
template <class T, class Ext>
RowBroadcast<std::remove_const_t<T>, Ext> row_broadcast(const TensorView<T, Ext>& v) {
  check(v.is_contiguous(), "expr", "row_broadcast operand must be contiguous");
  return {v.data(), v.extent(0)};
}
template <class T, class Ext>
RowBroadcast<T, Ext> row_broadcast(const Tensor<T, Ext>& t) {
  return {t.data(), t.extent(0)};
}
template <class T, class Ext>
void row_broadcast(Tensor<T, Ext>&& t) = delete;

// ---- evaluation -----------------------------------------------------------------------------
// dst[i] = e at flat indices [begin, end) of a destination with `cols` columns per row.
template <class A, class T, class E>
void eval_range(T* dst, const E& e, std::size_t cols, std::size_t begin, std::size_t end) {
  constexpr std::size_t L = kLanes<A>;
  std::size_t i = begin;
  while (i < end) {
    // One contiguous run: the rest of this row if rows matter, else the whole range.
    const std::size_t c0 = E::kRowBcast ? i % cols : i;
    const std::size_t run_end = E::kRowBcast ? std::min(end, i - c0 + cols) : end;
    std::size_t c = c0;
    for (; i + L <= run_end; i += L, c += L) store_from_float<A>(dst + i, e.template load<A>(i, c));
    for (; i < run_end; ++i, ++c) dst[i] = from_float<T>(e.at(i, c));
  }
}

template <class T, class Ext, class E>
std::size_t check_assign(const TensorView<T, Ext>& dst, const E& e) {
  static_assert(E::kRank == 0 || E::kRank == Ext::kRank, "assign: rank mismatch");
  if constexpr (E::kRank != 0 && !std::is_void_v<typename E::extents_type>)
    static_assert(extents_compatible_v<Ext, typename E::extents_type>,
                  "assign: destination and expression have different static extents");
  check(dst.is_contiguous(), "assign", "destination of shape ", shape_string(dst.extents()),
        " must be contiguous");
  if constexpr (E::kRank != 0) {
    const auto s = e.shape();
    for (std::size_t r = 0; r < Ext::kRank; ++r)
      check(s[r] == dst.extent(r) || s[r] == kAnyExtent, "assign", "shape mismatch: destination ",
            shape_string(dst.extents()), " vs expression ", shape_text(e));
  }
  return Ext::kRank == 0 ? 1 : dst.extent(Ext::kRank - 1);
}

}  // namespace ew

// ---- operators (found by ADL on views, tensors and nodes) -------------------------------------
template <ew::Operand A, ew::Operand B>
requires(ew::TensorOperand<A> || ew::TensorOperand<B>) auto operator+(A&& a, B&& b) {
  return ew::make_binary<ew::AddOp>(std::forward<A>(a), std::forward<B>(b));
}
template <ew::Operand A, ew::Operand B>
requires(ew::TensorOperand<A> || ew::TensorOperand<B>) auto operator-(A&& a, B&& b) {
  return ew::make_binary<ew::SubOp>(std::forward<A>(a), std::forward<B>(b));
}
template <ew::Operand A, ew::Operand B>
requires(ew::TensorOperand<A> || ew::TensorOperand<B>) auto operator*(A&& a, B&& b) {
  return ew::make_binary<ew::MulOp>(std::forward<A>(a), std::forward<B>(b));
}
template <ew::Operand A, ew::Operand B>
requires(ew::TensorOperand<A> || ew::TensorOperand<B>) auto operator/(A&& a, B&& b) {
  return ew::make_binary<ew::DivOp>(std::forward<A>(a), std::forward<B>(b));
}
template <ew::TensorOperand A>
auto operator-(A&& a) {
  return ew::make_unary<ew::NegOp>(std::forward<A>(a));
}

// dst = e, one SIMD pass. dst: a contiguous view of float, bf16 or f16.
template <class A = xsimd::default_arch, class T, class Ext, ew::Operand E>
requires ew::Element<T>
void assign(TensorView<T, Ext> dst, E&& e) {
  const auto node = ew::to_node(std::forward<E>(e));
  const std::size_t cols = ew::check_assign(dst, node);
  ew::eval_range<A>(dst.data(), node, cols, 0, dst.size());
}

// The same, split across the pool's threads in chunks of whole SIMD batches (rows when a row
// broadcast is present keep their contiguous runs).
template <class A = xsimd::default_arch, class T, class Ext, ew::Operand E>
requires ew::Element<T>
void assign(ThreadPool& pool, TensorView<T, Ext> dst, E&& e) {
  const auto node = ew::to_node(std::forward<E>(e));
  const std::size_t cols = ew::check_assign(dst, node);
  constexpr std::size_t kGrain = 4096;  // about 16 KiB of float output per chunk at least
  constexpr std::size_t L = ew::kLanes<A>;
  const std::size_t n = dst.size(), blocks = (n + L - 1) / L;
  pool.parallel_for(blocks, kGrain / L, [&](std::size_t b, std::size_t e2, int) {
    ew::eval_range<A>(dst.data(), node, cols, b * L, std::min(n, e2 * L));
  });
}

}  // namespace tmoe
