// tests/test_util.hpp: helpers shared by the test suite: seeded random data, error measures and
// a loop over every CPU instruction set this machine can run.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tmoe/backend/cpu/kernel_table.hpp"

namespace tmoe::test {

inline std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -1.f,
                                        float hi = 1.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// max_i |a_i - b_i| / max(max_i |b_i|, tiny): one number that bounds the error relative to the
// scale of the reference.
inline double max_rel_error(const float* a, const float* b, std::size_t n) {
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < n; ++i) {
    err = std::max(err, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return err / scale;
}

// Calls fn(table) once per ISA that this binary was built with and this CPU runs, each inside a
// doctest SUBCASE named after the ISA.
template <class F>
void for_each_isa(F&& fn) {
  for (int i = 0; i < cpu::kIsaCount; ++i) {
    const auto isa = static_cast<cpu::Isa>(i);
    if (!cpu::isa_available(isa)) continue;
    SUBCASE(std::string(cpu::isa_name(isa)).c_str()) { fn(cpu::kernels_for(isa)); }
  }
}

}  // namespace tmoe::test
