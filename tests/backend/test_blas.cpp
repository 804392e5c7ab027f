// matmul of every ISA and weight type against the double-precision reference, on both kernels
// (GEMV for T < kGemmMinRows, blocked GEMM above) and at shapes that leave tails everywhere: in
// not a multiple of the SIMD width or of the GEMM depth block KC = 256, out not a multiple of the
// GEMV row group (4), the register tile's 2L rows of W (16 or 32) or the packed block of W (2048
// rows), T not a multiple of the tile rows (6 or 12) or of the X block (240 or 480 rows). Bound
// per output: |y - ref| <= in * eps_f32 * sum_i |w_i x_i| (+|bias|): float32 accumulation in a
// different order than the reference. The GEMM's split of W rows into chunks (gemm_row_chunks) is
// checked on its own: contiguous, covering, shrinking, whole grains, capped.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include "test_util.hpp"
#include "tmoe/backend/cpu/ops.hpp"
#include "tmoe/backend/reference/blas.hpp"

using namespace tmoe;

namespace {
template <class WT>
// whole: one call of the ISA's matmul_rows over all rows of W (no split by the pool, so the GEMM's
// own blocks of NC = 2048 rows are crossed), instead of cpu::matmul.
void check_matmul(const cpu::KernelTable& k, ThreadPool& pool, std::size_t out, std::size_t in,
                  std::size_t T, bool with_bias, bool whole = false) {
  Matrix<WT> w(out, in);
  const auto wf = test::random_floats(out * in, out * 131 + in);
  for (std::size_t i = 0; i < out * in; ++i) w.data()[i] = from_float<WT>(wf[i]);
  Matrix<float> x(T, in);
  const auto xf = test::random_floats(T * in, T + 7 * in, -2.f, 2.f);
  std::copy(xf.begin(), xf.end(), x.data());
  const auto bias = test::random_floats(out, 99);
  Matrix<float> y(T, out), r(T, out);
  if (whole)
    cpu::detail::matmul_rows_fn<WT>(k)(w.data(), in, x.data(), in, y.data(), out, in, T, 0, out);
  else
    cpu::matmul<WT>(pool, w.cview(), x.cview(), y.view(), with_bias ? bias.data() : nullptr, k);
  reference::matmul<WT>(w.cview(), x.cview(), r.view(), with_bias ? bias.data() : nullptr);
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t o = 0; o < out; ++o) {
      double mag = with_bias ? std::abs(bias[o]) : 0.0;
      for (std::size_t i = 0; i < in; ++i) mag += std::abs(to_float(w(o, i)) * x(t, i));
      REQUIRE(std::abs(y(t, o) - r(t, o)) <=
              in * std::numeric_limits<float>::epsilon() * mag + 1e-30);
    }
}
}  // namespace

TEST_CASE_TEMPLATE("matmul matches the reference on every ISA", WT, float, bf16, f16) {
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    for (std::size_t out : {1u, 5u, 33u, 64u})
      for (std::size_t in : {1u, 7u, 16u, 31u, 100u, 257u})
        for (std::size_t T : {1u, 3u, 5u, 6u, 7u, 8u, 12u, 13u})
          check_matmul<WT>(k, pool, out, in, T, (out + in) % 2 == 0);
  });
}

TEST_CASE_TEMPLATE("matmul crosses every GEMM block boundary", WT, float, bf16, f16) {
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    check_matmul<WT>(k, pool, 131, 1700, 13, true);       // 7 depth blocks, tails in every dim
    check_matmul<WT>(k, pool, 70, 800, 130, false);       // 4 depth blocks, 130 rows of X
    check_matmul<WT>(k, pool, 37, 390, 490, true);        // more rows of X than one X block
    check_matmul<WT>(k, pool, 257, 40, 5, true);          // GEMV with a row-group tail
    check_matmul<WT>(k, pool, 17000, 24, 6, false);       // many chunks of the pool's split
    check_matmul<WT>(k, pool, 4200, 24, 7, false, true);  // 3 blocks of NC rows in one call
  });
}

TEST_CASE("matmul with a pool of one thread and strided rows") {
  ThreadPool pool(1);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    // Views into wider buffers: leading dimensions larger than the row length.
    Matrix<bf16> wbuf(37, 80);
    Matrix<float> xbuf(9, 70), ybuf(9, 50), r(9, 37);
    const auto wf = test::random_floats(37 * 80, 5);
    for (std::size_t i = 0; i < wf.size(); ++i) wbuf.data()[i] = bf16::from_float(wf[i]);
    const auto xf = test::random_floats(9 * 70, 6);
    std::copy(xf.begin(), xf.end(), xbuf.data());
    for (std::size_t T : {1u, 9u}) {
      MatrixView<const bf16> w(wbuf.data(), DExtents<2>(37, 61), {80, 1});
      MatrixView<const float> x(xbuf.data(), DExtents<2>(T, 61), {70, 1});
      MatrixView<float> y(ybuf.data(), DExtents<2>(T, 37), {50, 1});
      cpu::matmul<bf16>(pool, w, x, y, nullptr, k);
      reference::matmul<bf16>(w, x, r.view().row_range(0, T));
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t o = 0; o < 37; ++o)
          CHECK(y(t, o) == doctest::Approx(r(t, o)).epsilon(1e-4));
    }
  });
}

TEST_CASE("matmul reports shape errors") {
  ThreadPool pool(1);
  Matrix<float> w(4, 8), x(2, 7), y(2, 4);
  CHECK_THROWS_WITH(cpu::matmul<float>(pool, w.cview(), x.cview(), y.view()),
                    "[matmul] x has 7 columns, weight (4, 8) needs 8");
}

TEST_CASE(
    "gemm_row_chunks covers the rows once, in shrinking chunks of one grain to kGemmMaxChunk") {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (std::size_t out : {1u, 37u, 64u, 127u, 128u, 131u, 1024u, 8960u, 17000u}) {
      std::vector<std::pair<std::size_t, std::size_t>> chunks;
      std::mutex m;
      cpu::gemm_row_chunks(pool, out, [&](std::size_t b, std::size_t e) {
        std::lock_guard<std::mutex> lock(m);
        chunks.emplace_back(b, e);
      });
      std::sort(chunks.begin(), chunks.end());
      CAPTURE(threads);
      CAPTURE(out);
      REQUIRE(!chunks.empty());
      CHECK(chunks.front().first == 0);
      CHECK(chunks.back().second == out);
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        const auto [b, e] = chunks[i];
        CHECK(b < e);
        if (i + 1 < chunks.size()) {
          CHECK(e == chunks[i + 1].first);  // contiguous, no overlap
          CHECK(e - b >= cpu::kGemmRowGrain);
          CHECK(e - b <= cpu::kGemmMaxChunk);
          CHECK(b % cpu::kGemmRowGrain == 0);
          // handed out in order: no chunk is larger than the one before it (the last may merge
          // a remainder of less than a grain)
          if (i > 0) CHECK(e - b <= chunks[i - 1].second - chunks[i - 1].first);
        }
      }
      if (out >= 8 * cpu::kGemmRowGrain * static_cast<std::size_t>(threads))
        CHECK(chunks.size() >= 4 * static_cast<std::size_t>(threads));
    }
  }
}

// Every ISA's table holds kernels compiled for that ISA: the ISA translation units instantiate
// the same templates, and two of them with the same architecture tag would be one symbol of which
// the linker keeps a single copy (this happened to avx512 and avx512_vnni_bf16 until the latter
// got its own tag, simd.hpp kernel_arch: its VNNI and BF16 code never ran). So no two ISAs may
// share a kernel's address.
TEST_CASE("each ISA's kernel table holds its own instantiations") {
  std::vector<const cpu::KernelTable*> tables;
  for (int i = 0; i < cpu::kIsaCount; ++i)
    if (cpu::isa_available(static_cast<cpu::Isa>(i)))
      tables.push_back(&cpu::kernels_for(static_cast<cpu::Isa>(i)));
  for (std::size_t a = 0; a < tables.size(); ++a)
    for (std::size_t b = a + 1; b < tables.size(); ++b) {
      CAPTURE(cpu::isa_name(tables[a]->isa));
      CAPTURE(cpu::isa_name(tables[b]->isa));
      const auto& x = *tables[a];
      const auto& y = *tables[b];
      CHECK(bool(x.reduce.sum != y.reduce.sum));
      CHECK(bool(x.blas.matmul_rows_bf16 != y.blas.matmul_rows_bf16));
      CHECK(bool(x.attn.scores != y.attn.scores));
      CHECK(bool(x.quant.rows_q8_0 != y.quant.rows_q8_0));
      CHECK(bool(x.quant.rows_q4_0 != y.quant.rows_q4_0));
    }
}
