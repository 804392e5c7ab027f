// Kernels for ISA avx2; compiled with that ISA's flags by tmoe_enable_cpu_dispatch().
#include "tmoe/backend/cpu/kernel_table_impl.hpp"

TMOE_CPU_DEFINE_ISA(avx2)
