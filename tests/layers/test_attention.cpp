// GQA and MLA attention against the whole-sequence references, run the way a model runs them:
// a prefill chunk then one-token decode steps through the cache. MLA naive and absorbed forms
// against each other. Bound: 2e-5 of the output scale for every check (float32 attention over
// <= 600 positions; measured errors are ~1e-6).
#include <doctest/doctest.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "layer_test_util.hpp"
#include "tmoe/backend/reference/attention.hpp"
#include "tmoe/layers/attention_gqa.hpp"
#include "tmoe/layers/attention_mla.hpp"

using namespace tmoe;

namespace {
constexpr double kAttnBound = 2e-5;

// Runs forward over x in chunks (sizes in `chunks`, the last repeated), returns all outputs.
template <class Layer, class Cache>
Matrix<float> run_chunks(const Layer& layer, Cache& cache, ThreadPool& pool,
                         MatrixView<const float> x, std::vector<std::size_t> chunks,
                         const cpu::KernelTable& k) {
  Matrix<float> y(x.rows(), x.cols());
  std::size_t t = 0, c = 0;
  while (t < x.rows()) {
    const std::size_t n = std::min(chunks[std::min(c++, chunks.size() - 1)], x.rows() - t);
    layer.forward(pool, x.row_range(t, n), y.view().row_range(t, n), cache, k);
    t += n;
  }
  return y;
}

template <class WT>
struct GqaFixture {
  GqaConfig cfg;
  Matrix<WT> q, k, v, o;
  std::vector<float> qb, kb, vb;
  GqaFixture(std::size_t hidden, std::size_t H, std::size_t Hkv, std::size_t D, bool bias)
      : q(test::random_matrix<WT>(H * D, hidden, 1)),
        k(test::random_matrix<WT>(Hkv * D, hidden, 2)),
        v(test::random_matrix<WT>(Hkv * D, hidden, 3)),
        o(test::random_matrix<WT>(hidden, H * D, 4)) {
    cfg.hidden = hidden, cfg.n_heads = H, cfg.n_kv_heads = Hkv, cfg.head_dim = D;
    if (bias)
      qb = test::random_floats(H * D, 5), kb = test::random_floats(Hkv * D, 6),
      vb = test::random_floats(Hkv * D, 7);
  }
  GqaWeights<WT> weights() const {
    GqaWeights<WT> w;
    w.q = q.cview(), w.k = k.cview(), w.v = v.cview(), w.o = o.cview();
    w.q_bias = qb.empty() ? nullptr : qb.data();
    w.k_bias = kb.empty() ? nullptr : kb.data();
    w.v_bias = vb.empty() ? nullptr : vb.data();
    return w;
  }
};
}  // namespace

TEST_CASE_TEMPLATE("GQA prefill + decode matches the reference on every ISA", WT, float, bf16) {
  ThreadPool pool(3);
  struct Case {
    std::size_t hidden, H, Hkv, D, window, T;
    bool bias;
    RopeLayout layout;
    std::vector<std::size_t> chunks;
  };
  const std::vector<Case> cases = {
      {40, 6, 2, 64, 0, 11, true, RopeLayout::half_split, {7, 1}},         // Qwen-like, group 3
      {24, 4, 4, 128, 3, 9, false, RopeLayout::interleaved, {4, 1}},       // MHA, sliding window 3
      {16, 2, 1, 64, 0, 150, true, RopeLayout::half_split, {150}},         // > 2 flash tiles
      {16, 3, 1, 64, 70, 150, false, RopeLayout::half_split, {100, 1}},    // window across tiles
      {16, 2, 1, 64, 0, 600, false, RopeLayout::half_split, {590, 1}},     // split-K decode
      {16, 2, 2, 128, 530, 600, true, RopeLayout::interleaved, {590, 1}},  // split-K + window
      {8, 34, 1, 64, 0, 40, false, RopeLayout::half_split, {37, 1}},       // group 34 > block rows
  };
  test::for_each_isa([&](const cpu::KernelTable& k) {
    for (const auto& c : cases) {
      GqaFixture<WT> f(c.hidden, c.H, c.Hkv, c.D, c.bias);
      f.cfg.sliding_window = c.window;
      RopeConfig rc;
      rc.dim = c.D, rc.layout = c.layout;
      const Rope rope(rc, 1024);
      GqaAttention<WT> attn(f.cfg, f.weights(), rope);
      auto x = test::random_matrix<float>(c.T, c.hidden, c.T + c.D);
      KvCache cache = attn.make_cache(c.T);
      Matrix<float> y = run_chunks(attn, cache, pool, x.cview(), c.chunks, k);
      Matrix<float> r(c.T, c.hidden);
      reference::gqa_attention<WT>(f.cfg, f.weights(), rc, x.cview(), r.view());
      CHECK(test::rel_error(y.cview(), r.cview()) <= kAttnBound);
      CHECK(cache.size() == c.T);
    }
  });
}

TEST_CASE("GQA reports a full KV cache and keeps its contents") {
  ThreadPool pool(1);
  GqaFixture<float> f(16, 2, 1, 64, false);
  RopeConfig rc;
  rc.dim = 64;
  const Rope rope(rc, 16);
  GqaAttention<float> attn(f.cfg, f.weights(), rope);
  KvCache cache = attn.make_cache(5);
  auto x = test::random_matrix<float>(4, 16, 1);
  Matrix<float> y(4, 16);
  attn.forward(pool, x.cview(), y.view(), cache);
  CHECK_THROWS_WITH(attn.forward(pool, x.cview().row_range(0, 2), y.view().row_range(0, 2), cache),
                    "[gqa_attention] KV cache full: capacity 5 positions, holds 4, cannot add 2");
  CHECK(cache.size() == 4);
  GqaConfig bad = f.cfg;
  bad.head_dim = 96;
  CHECK_THROWS_WITH(GqaAttention<float>(bad, f.weights(), rope),
                    "[gqa_attention] unsupported head_dim 96 (supported: {64, 128})");
}

namespace {
template <class WT>
struct MlaFixture {
  MlaConfig cfg;
  Matrix<WT> q_a, q_b, q, kv_a, kv_b, o;
  Vector<WT> q_norm, kv_norm;
  MlaFixture(std::size_t hidden, std::size_t H, std::size_t q_lora, std::size_t R, std::size_t Dn,
             std::size_t Dr, std::size_t Dv)
      : q_a(test::random_matrix<WT>(std::max<std::size_t>(q_lora, 1), hidden, 1)),
        q_b(test::random_matrix<WT>(H * (Dn + Dr), std::max<std::size_t>(q_lora, 1), 2, -0.3f,
                                    0.3f)),
        q(test::random_matrix<WT>(H * (Dn + Dr), hidden, 3)),
        kv_a(test::random_matrix<WT>(R + Dr, hidden, 4)),
        kv_b(test::random_matrix<WT>(H * (Dn + Dv), R, 5, -0.3f, 0.3f)),
        o(test::random_matrix<WT>(hidden, H * Dv, 6)),
        q_norm(test::random_vector<WT>(std::max<std::size_t>(q_lora, 1), 7, 0.5f, 1.5f)),
        kv_norm(test::random_vector<WT>(R, 8, 0.5f, 1.5f)) {
    cfg.hidden = hidden, cfg.n_heads = H, cfg.q_lora_rank = q_lora, cfg.kv_lora_rank = R;
    cfg.qk_nope_head_dim = Dn, cfg.qk_rope_head_dim = Dr, cfg.v_head_dim = Dv;
  }
  MlaWeights<WT> weights() const {
    MlaWeights<WT> w;
    if (cfg.q_lora_rank)
      w.q_a = q_a.cview(), w.q_b = q_b.cview(), w.q_a_norm = q_norm.cview();
    else
      w.q = q.cview();
    w.kv_a = kv_a.cview(), w.kv_b = kv_b.cview(), w.o = o.cview(), w.kv_a_norm = kv_norm.cview();
    return w;
  }
};

RopeConfig yarn_rope(std::size_t dim) {
  RopeConfig c;
  c.type = RopeType::yarn, c.layout = RopeLayout::interleaved, c.dim = dim;
  c.factor = 40.f, c.original_max_position = 4096, c.mscale = 1.f, c.mscale_all_dim = 1.f;
  return c;
}
}  // namespace

TEST_CASE_TEMPLATE("MLA naive and absorbed match the reference and each other", WT, float, bf16) {
  ThreadPool pool(3);
  const RopeConfig rc = yarn_rope(32);
  const Rope rope(rc, 256);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    // T = 9: a 6-token prefill block then decode steps; T = 150: prefill blocks of 32 tokens
    // over 3 key tiles, a second prefill chunk after the first, then decode.
    for (auto [q_lora, T, chunks] : {std::tuple{48u, 9u, std::vector<std::size_t>{6, 1}},
                                     std::tuple{0u, 9u, std::vector<std::size_t>{6, 1}},
                                     std::tuple{0u, 150u, std::vector<std::size_t>{100, 45, 1}}}) {
      CAPTURE(T);
      MlaFixture<WT> f(40, 4, q_lora, 128, 64, 32, 64);
      auto x = test::random_matrix<float>(T, 40, 10 + q_lora);
      Matrix<float> r(T, 40);
      reference::mla_attention<WT>(f.cfg, f.weights(), rc, x.cview(), r.view());
      MlaAttention<WT> naive(f.cfg, f.weights(), rope, MlaForm::naive);
      MlaAttention<WT> absorbed(f.cfg, f.weights(), rope, MlaForm::absorbed);
      MlaCache nc = naive.make_cache(T), ac = absorbed.make_cache(T);
      Matrix<float> yn = run_chunks(naive, nc, pool, x.cview(), chunks, k);
      Matrix<float> ya = run_chunks(absorbed, ac, pool, x.cview(), chunks, k);
      CHECK(test::rel_error(yn.cview(), r.cview()) <= kAttnBound);
      CHECK(test::rel_error(ya.cview(), r.cview()) <= kAttnBound);
      CHECK(test::rel_error(ya.cview(), yn.cview()) <= kAttnBound);
      // Absorbed caches only the latent and the rope key: (128 + 32) floats per position.
      CHECK(ac.bytes_per_position() == (128 + 32) * sizeof(float));
      CHECK(nc.bytes_per_position() == (32 + 4 * (64 + 64)) * sizeof(float));
    }
  });
}

TEST_CASE("MLA at R1 dims uses softmax scale 0.13523378 (192^-1/2 * mscale^2)") {
  const std::size_t H = 128, d = 7168, Dq = 192;
  auto shape = [](std::size_t r, std::size_t c) { return MatrixView<const bf16>(nullptr, r, c); };
  MlaConfig cfg;
  cfg.hidden = d, cfg.n_heads = H, cfg.q_lora_rank = 1536, cfg.kv_lora_rank = 512;
  cfg.qk_nope_head_dim = 128, cfg.qk_rope_head_dim = 64, cfg.v_head_dim = 128;
  MlaWeights<bf16> w;
  w.q_a = shape(1536, d), w.q_b = shape(H * Dq, 1536), w.kv_a = shape(576, d);
  w.kv_b = shape(H * 256, 512), w.o = shape(d, H * 128);
  w.q_a_norm = VectorView<const bf16>(nullptr, 1536),
  w.kv_a_norm = VectorView<const bf16>(nullptr, 512);
  const Rope rope(yarn_rope(64), 1);
  MlaAttention<bf16> mla(cfg, w, rope, MlaForm::absorbed);
  CHECK(std::abs(mla.config().softmax_scale / 0.13523378 - 1.0) <= 1e-6);
  cfg.kv_lora_rank = 384;
  CHECK_THROWS_WITH(MlaAttention<bf16>(cfg, w, rope, MlaForm::absorbed),
                    "[mla_attention] kv_lora_rank 384 not in {128, 512}");
}
