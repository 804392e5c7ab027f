// tests/cuda/cuda_test_util.hpp: helpers of the CUDA tests: random inputs, device round trips
// and error measures. The tests are host C++ that reach the GPU through api.hpp only; this file
// does not include tests/test_util.hpp because that pulls in the CPU kernel tables (xsimd), which
// the GPU suite neither needs nor links.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "tmoe/backend/cuda/api.hpp"

namespace tmoe::test {

inline std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -1.f,
                                        float hi = 1.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

template <class T>
std::vector<T> rounded(const std::vector<float>& v) {
  std::vector<T> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = from_float<T>(v[i]);
  return r;
}

template <class T>
std::vector<float> widened(const std::vector<T>& v) {
  std::vector<float> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = to_float(v[i]);
  return r;
}

// A device copy of host data.
template <class T>
cuda::DeviceBuffer<T> to_device(const std::vector<T>& v) {
  cuda::DeviceBuffer<T> d(v.size());
  d.upload(v.data());
  return d;
}

template <class T>
std::vector<T> to_host(const cuda::DeviceBuffer<T>& d) {
  std::vector<T> v(d.size());
  d.download(v.data());
  return v;
}

// A device buffer of n elements filled with 0xff bytes (NaN for float and bf16), so an element a
// kernel forgot to write is caught by the finiteness checks.
template <class T>
cuda::DeviceBuffer<T> poisoned(std::size_t n) {
  cuda::DeviceBuffer<T> d(n);
  cuda::fill_bytes(d.data(), 0xff, d.bytes());
  return d;
}

// Largest |a - b| / bound_i over i; every a_i must be finite. <= 1 passes.
inline double worst_ratio(const std::vector<float>& a, const std::vector<double>& b,
                          const std::vector<double>& bound) {
  double w = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    w = std::max(w, std::abs(double(a[i]) - b[i]) / bound[i]);
  }
  return w;
}

}  // namespace tmoe::test
