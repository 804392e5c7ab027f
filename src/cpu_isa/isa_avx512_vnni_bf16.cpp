// Kernels for ISA avx512_vnni_bf16; compiled with that ISA's flags by tmoe_enable_cpu_dispatch().
#include "tmoe/backend/cpu/kernel_table_impl.hpp"

TMOE_CPU_DEFINE_ISA(avx512_vnni_bf16)
