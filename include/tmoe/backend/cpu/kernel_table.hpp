// tmoe/backend/cpu/kernel_table.hpp: the table of CPU kernels for one instruction set, and the
// run-time choice among the tables a program was built with.
//
// Each kernel family (reductions, BLAS, quantized dot products, attention, ...) is a struct of
// function pointers filled by make_<family>_kernels<Arch>(). KernelTable gathers the families.
//
// Two ways to build a program:
//  - plain: kernels() returns the table built for the flags of the including translation unit
//    (kernel_arch, simd.hpp: xsimd::default_arch or its AVX-512 VNNI + BF16 tag), e.g.
//    -march=native for a local build.
//  - dispatched (CMake: tmoe_enable_cpu_dispatch(target), which defines TMOE_CPU_DISPATCH): the
//    program also links src/cpu_isa/isa_*.cpp, one translation unit per ISA, and kernels()
//    returns the best table the running CPU supports, or the one named by TMOE_ISA.
#pragma once

#include <cstdlib>
#include <string_view>

#include "tmoe/backend/cpu/attention.hpp"
#include "tmoe/backend/cpu/blas.hpp"
#include "tmoe/backend/cpu/isa.hpp"
#include "tmoe/backend/cpu/norm.hpp"
#include "tmoe/backend/cpu/quant_kernels.hpp"
#include "tmoe/backend/cpu/reduce.hpp"
#include "tmoe/backend/cpu/vec.hpp"

namespace tmoe::cpu {

struct KernelTable {
  Isa isa = Isa::portable;
  ReduceKernels reduce;
  BlasKernels blas;
  NormKernels norm;
  VecKernels vec;
  AttentionKernels attn;
  QuantKernels quant;
};

template <class Arch>
KernelTable make_kernel_table(Isa isa) {
  KernelTable t;
  t.isa = isa;
  t.reduce = make_reduce_kernels<Arch>();
  t.blas = make_blas_kernels<Arch>();
  t.norm = make_norm_kernels<Arch>();
  t.vec = make_vec_kernels<Arch>();
  t.attn = make_attention_kernels<Arch>();
  t.quant = make_quant_kernels<Arch>();
  return t;
}

#if defined(TMOE_CPU_DISPATCH)
// Defined in src/cpu_isa/isa_<name>.cpp; each returns its table.
const KernelTable& kernel_table_portable();
const KernelTable& kernel_table_avx2();
const KernelTable& kernel_table_avx512();
const KernelTable& kernel_table_avx512_vnni_bf16();

// The table for `isa`; throws when the running CPU does not support it.
inline const KernelTable& kernels_for(Isa isa) {
  check(isa <= detect_isa(), "cpu", "ISA ", isa_name(isa), " requested, but this CPU supports only ",
        isa_name(detect_isa()));
  switch (isa) {
    case Isa::portable: return kernel_table_portable();
    case Isa::avx2: return kernel_table_avx2();
    case Isa::avx512: return kernel_table_avx512();
    case Isa::avx512_vnni_bf16: return kernel_table_avx512_vnni_bf16();
  }
  return kernel_table_portable();
}
inline bool isa_available(Isa isa) { return isa <= detect_isa(); }
#else
inline const KernelTable& kernels_for(Isa isa) {
  static const KernelTable table = make_kernel_table<kernel_arch>(compiled_isa());
  check(isa == compiled_isa(), "cpu", "ISA ", isa_name(isa),
        " requested, but this program was built without CPU dispatch for ", isa_name(compiled_isa()));
  return table;
}
inline bool isa_available(Isa isa) { return isa == compiled_isa(); }
#endif

// The ISA chosen for this process: TMOE_ISA if set, else the best available.
inline Isa selected_isa() {
  static const Isa isa = [] {
    if (const char* env = std::getenv("TMOE_ISA"); env && *env) return parse_isa(env);
#if defined(TMOE_CPU_DISPATCH)
    return detect_isa();
#else
    return compiled_isa();
#endif
  }();
  return isa;
}

inline const KernelTable& kernels() {
  static const KernelTable& t = kernels_for(selected_isa());
  return t;
}

}  // namespace tmoe::cpu
