# Debian's xsimd 8.1 package exports a target that links "xtl" without finding it; xsimd needs
# nothing from xtl here, so provide an empty stand-in when the real one is absent.
if(NOT TARGET xtl)
  find_package(xtl QUIET)
  if(NOT TARGET xtl)
    add_library(xtl INTERFACE IMPORTED)
  endif()
endif()
