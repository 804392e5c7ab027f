// tmoe/backend/cpu/kernel_table_impl.hpp: included only by src/cpu_isa/isa_<name>.cpp, each
// compiled with its own -m flags. TMOE_CPU_DEFINE_ISA(name) defines kernel_table_<name>() with
// the kernels instantiated for the widest xsimd architecture those flags enable.
#pragma once

#include "tmoe/backend/cpu/kernel_table.hpp"

#define TMOE_CPU_DEFINE_ISA(name)                                                   \
  namespace tmoe::cpu {                                                             \
  static_assert(compiled_isa() == Isa::name,                                        \
                "isa_" #name ".cpp must be compiled with the flags of ISA " #name); \
  const KernelTable& kernel_table_##name() {                                        \
    static const KernelTable table = make_kernel_table<kernel_arch>(Isa::name);     \
    return table;                                                                   \
  }                                                                                 \
  }
