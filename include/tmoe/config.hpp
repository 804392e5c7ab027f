// tmoe/config.hpp: version, portability macros and feature switches shared by every header.
//
// TMOE_HOST_DEVICE marks functions usable from both host code and CUDA kernels (nvcc only);
// TMOE_INLINE forces inlining in hot loops; TMOE_ASSERT checks kernel preconditions (kernels
// assert, API boundaries throw tmoe::Error). Define TMOE_NDEBUG_ASSERTS to compile asserts out.
#pragma once

#define TMOE_VERSION_MAJOR 0
#define TMOE_VERSION_MINOR 1
#define TMOE_VERSION_PATCH 0
#define TMOE_VERSION_STRING "0.1.0"

#if defined(__CUDACC__)
#define TMOE_HOST_DEVICE __host__ __device__
#define TMOE_DEVICE __device__
#else
#define TMOE_HOST_DEVICE
#define TMOE_DEVICE
#endif

#if defined(__GNUC__) || defined(__clang__)
#define TMOE_INLINE inline __attribute__((always_inline))
#define TMOE_NOINLINE __attribute__((noinline))
#define TMOE_RESTRICT __restrict__
#define TMOE_LIKELY(x) __builtin_expect(!!(x), 1)
#define TMOE_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define TMOE_INLINE inline
#define TMOE_NOINLINE
#define TMOE_RESTRICT
#define TMOE_LIKELY(x) (x)
#define TMOE_UNLIKELY(x) (x)
#endif

#if defined(TMOE_NDEBUG_ASSERTS) || defined(__CUDA_ARCH__)
#define TMOE_ASSERT(cond) ((void)0)
#else
#include <cstdio>
#include <cstdlib>
// Kernel precondition: a violated TMOE_ASSERT is a bug in tmoe or its caller, not bad input.
#define TMOE_ASSERT(cond)                                                                  \
  do {                                                                                     \
    if (TMOE_UNLIKELY(!(cond))) {                                                          \
      std::fprintf(stderr, "tmoe: assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)
#endif

#include <cstddef>

namespace tmoe {
inline constexpr int kVersionMajor = TMOE_VERSION_MAJOR;
inline constexpr int kVersionMinor = TMOE_VERSION_MINOR;
inline constexpr int kVersionPatch = TMOE_VERSION_PATCH;
// Alignment of every owning buffer (one cache line, one AVX-512 register).
inline constexpr std::size_t kAlignment = 64;
}  // namespace tmoe
