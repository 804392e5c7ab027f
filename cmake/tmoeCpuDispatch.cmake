# CPU dispatch: compile tmoe's CPU kernels once per instruction set (portable x86-64, AVX2+FMA,
# AVX-512, AVX-512 with VNNI and BF16), each in its own translation unit with its own flags, and
# let tmoe choose the best one the CPU supports at run time (override with the environment
# variable TMOE_ISA=portable|avx2|avx512|avx512_vnni_bf16). Without it, a program uses the
# kernels built for the flags it was compiled with.
#
#   tmoe_add_cpu_dispatch_library(<name>)  a static library holding the four ISA objects; link it
#                                          into any number of programs (build the kernels once).
#   tmoe_enable_cpu_dispatch(<target>)     makes such a library for <target> and links it.
#
# The ISA objects come from a static library linked after the program's own objects, so for any
# inline function that both kinds of translation unit emit, the linker keeps the baseline copy
# (docs/architecture.md, "CPU dispatch").
function(tmoe_add_cpu_dispatch_library name)
  add_library(${name} STATIC)
  target_link_libraries(${name} PUBLIC tmoe::tmoe)
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    target_sources(${name} PRIVATE ${TMOE_CPU_ISA_DIR}/isa_portable.cpp)
    return()
  endif()
  set(_dir "${TMOE_CPU_ISA_DIR}")
  target_sources(${name} PRIVATE ${_dir}/isa_portable.cpp ${_dir}/isa_avx2.cpp
                                 ${_dir}/isa_avx512.cpp ${_dir}/isa_avx512_vnni_bf16.cpp)
  set(_base "-march=x86-64;-mtune=generic")
  set(_avx2 "${_base};-mavx2;-mfma;-mf16c;-mbmi2")
  set(_avx512 "${_avx2};-mavx512f;-mavx512bw;-mavx512dq;-mavx512vl;-mavx512cd")
  set_source_files_properties(${_dir}/isa_portable.cpp TARGET_DIRECTORY ${name}
    PROPERTIES COMPILE_OPTIONS "${_base}")
  set_source_files_properties(${_dir}/isa_avx2.cpp TARGET_DIRECTORY ${name}
    PROPERTIES COMPILE_OPTIONS "${_avx2}")
  set_source_files_properties(${_dir}/isa_avx512.cpp TARGET_DIRECTORY ${name}
    PROPERTIES COMPILE_OPTIONS "${_avx512}")
  set_source_files_properties(${_dir}/isa_avx512_vnni_bf16.cpp TARGET_DIRECTORY ${name}
    PROPERTIES COMPILE_OPTIONS "${_avx512};-mavx512vnni;-mavx512bf16")
  target_compile_definitions(${name} PUBLIC TMOE_CPU_DISPATCH=1)
endfunction()

function(tmoe_enable_cpu_dispatch target)
  if(NOT TARGET ${target}_tmoe_isa)
    tmoe_add_cpu_dispatch_library(${target}_tmoe_isa)
  endif()
  target_link_libraries(${target} PRIVATE ${target}_tmoe_isa)
endfunction()

# tmoe_add_models_library(<name>): a static library with the model builders of every weight
# format compiled once; linking it defines TMOE_MODELS_EXTERN for its users, whose translation
# units then skip those instantiations (tmoe/models/model.hpp).
function(tmoe_add_models_library name)
  add_library(${name} STATIC ${TMOE_MODELS_SRC_DIR}/instantiate.cpp)
  target_link_libraries(${name} PUBLIC tmoe::tmoe)
  target_compile_definitions(${name} PUBLIC TMOE_MODELS_EXTERN=1)
endfunction()
