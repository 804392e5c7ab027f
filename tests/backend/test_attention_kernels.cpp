// cpu::flash_attend_rows (the prefill block attention) on every ISA against a double-precision
// softmax attention written out here, row by row: the head shapes the layers dispatch to (GQA 64
// and 128, MLA's absorbed 512 + 64 rope and naive 128 + 64), block sizes 1 .. kAttnBlockRows
// (every remainder of the kernels' row tiles), key ranges that start and end inside, on and
// across the 64-key tiles, sliding windows, rows with no key at all (zeros) and rows whose range
// ends before another row's starts (a tile that only masks). Bound: (5e-7 + 1e-8 * score dims)
// of the largest |v|, i.e. 1.1e-6 at 64 dims, 6.3e-6 at 576 (float32 scores of up to ~10 in
// magnitude summed over the dims, <= 300 keys; measured worst 3.0e-6 at 576, portable ISA).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "test_util.hpp"
#include "tmoe/backend/cpu/attention.hpp"
#include "tmoe/backend/cpu/kernel_table.hpp"

using namespace tmoe;

namespace {
// out[i] = sum_j softmax_j(scale * (q1 . k1_j + q2 . k2_j)) v_j[i] over j in [lo, hi), in double.
std::vector<double> reference_row(const float* q1, std::size_t dk1, const float* q2,
                                  std::size_t dk2, const cpu::AttnKeys& keys, std::size_t dv,
                                  std::size_t lo, std::size_t hi, float scale) {
  std::vector<double> out(dv, 0.0);
  if (lo >= hi) return out;
  std::vector<double> s(hi - lo);
  double mx = -1e300;
  for (std::size_t j = lo; j < hi; ++j) {
    double d = 0;
    for (std::size_t i = 0; i < dk1; ++i) d += double(q1[i]) * keys.k1[j * keys.ld1 + i];
    for (std::size_t i = 0; i < dk2; ++i) d += double(q2[i]) * keys.k2[j * keys.ld2 + i];
    s[j - lo] = d * scale;
    mx = std::max(mx, s[j - lo]);
  }
  double l = 0;
  for (auto& x : s) l += (x = std::exp(x - mx));
  for (std::size_t j = lo; j < hi; ++j)
    for (std::size_t i = 0; i < dv; ++i) out[i] += s[j - lo] / l * keys.v[j * keys.ldv + i];
  return out;
}

template <std::size_t DK1, std::size_t DK2, std::size_t DV>
void check_block(const cpu::KernelTable& k, std::size_t m, std::size_t n_keys, std::size_t window,
                 std::size_t seed) {
  const std::size_t dk1 = DK1, dk2 = DK2, dv = DV;
  CAPTURE(dk1);
  CAPTURE(dk2);
  CAPTURE(dv);
  CAPTURE(m);
  CAPTURE(n_keys);
  CAPTURE(window);
  // Keys, values and queries with padded row strides (the layers' caches and q rows are strided).
  const std::size_t ld1 = DK1 + 3, ld2 = DK2 + 5, ldv = DV + 7, ldq1 = DK1 + 1, ldq2 = DK2 + 2,
                    ldo = DV + 4;
  const auto k1 = test::random_floats(n_keys * ld1, seed + 1);
  const auto k2 = test::random_floats(n_keys * ld2, seed + 2);
  const auto v = test::random_floats(n_keys * ldv, seed + 3);
  const auto q1 = test::random_floats(m * ldq1, seed + 4, -2.f, 2.f);
  const auto q2 = test::random_floats(m * ldq2, seed + 5, -2.f, 2.f);
  const cpu::AttnKeys keys{k1.data(), ld1, DK2 ? k2.data() : nullptr, ld2, v.data(), ldv};
  // Row r: causal at position p_r (spread over the keys so ranges end on and off tile edges),
  // windowed when window > 0; row 1 (when m > 2) has no keys; the last row of a block of >= 4
  // ends within the first tile, before the others' windows start.
  std::vector<std::size_t> lo(m), hi(m);
  for (std::size_t r = 0; r < m; ++r) {
    const std::size_t p = n_keys - 1 - (r * 37) % std::min<std::size_t>(n_keys, 130);
    hi[r] = p + 1;
    lo[r] = (window > 0 && p + 1 > window) ? p + 1 - window : 0;
  }
  if (m > 2) lo[1] = hi[1] = 5;
  if (m >= 4) lo[m - 1] = 1, hi[m - 1] = std::min<std::size_t>(n_keys, 40);
  const float scale = 0.4f;  // logits spread over several units: masking and max matter
  std::vector<float> out(m * ldo, -7.f);
  cpu::flash_attend_rows<DK1, DK2, DV>(k.attn, q1.data(), ldq1, q2.data(), ldq2, m, keys, lo.data(),
                                       hi.data(), scale, out.data(), ldo);
  double vmax = 0;
  for (float x : v) vmax = std::max(vmax, double(std::abs(x)));
  double worst = 0;
  for (std::size_t r = 0; r < m; ++r) {
    const auto ref = reference_row(q1.data() + r * ldq1, DK1, q2.data() + r * ldq2, DK2, keys, DV,
                                   lo[r], hi[r], scale);
    for (std::size_t i = 0; i < DV; ++i)
      worst = std::max(worst, std::abs(out[r * ldo + i] - ref[i]) / vmax);
    if (lo[r] >= hi[r])
      for (std::size_t i = 0; i < DV; ++i) CHECK(out[r * ldo + i] == 0.f);
    for (std::size_t i = DV; i < ldo; ++i) CHECK(out[r * ldo + i] == -7.f);  // padding untouched
  }
  CHECK(worst <= 5e-7 + 1e-8 * double(DK1 + DK2));
}
}  // namespace

TEST_CASE("flash_attend_rows matches a double-precision attention on every ISA") {
  test::for_each_isa([](const cpu::KernelTable& k) {
    std::size_t seed = 0;
    for (std::size_t m : {1u, 2u, 3u, 5u, 6u, 7u, 13u, 30u, 32u}) {
      for (std::size_t n_keys : {1u, 63u, 64u, 65u, 300u}) {
        for (std::size_t window : {0u, 50u}) {
          seed += 10;
          check_block<64, 0, 64>(k, m, n_keys, window, seed);
          check_block<128, 0, 128>(k, m, n_keys, window, seed);
        }
        check_block<128, 64, 128>(k, m, n_keys, 0, seed + 100);
        check_block<512, 64, 512>(k, m, n_keys, 0, seed + 200);
      }
    }
  });
}
