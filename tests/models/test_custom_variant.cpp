// The custom variant of examples/custom_variant (MLA + Mixtral softmax top-k router + Q4_0
// experts, assembled from the layers by hand) against a reference: tmoe's deepseek_v2 builder
// over float weights equal to the dequantized Q4_0 values (greedy softmax routing with
// norm_topk_prob and scaling 1 is the Mixtral router). The two differ only in how the Q4_0
// matmuls round: the integer kernels quantize activations to Q8_0 per 32 (step = 1/127 of each
// block's max |x|, error <= half a step), which on these random activations moves each matmul's
// output by about 0.3-0.5% of its scale; through 2 layers of router, gate/up/down and the
// residual stream the logits moved by 0.74% (measured, AVX2 and portable kernels alike).
// Bound: max |logit - ref| <= 1.5e-2 * max |ref| over prefill and decode, and the same experts
// chosen for every token. The test also checks that it can tell: the logits of the original
// (unquantized) float weights are at least 5x further away than the variant's (measured 7.4%).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "custom_variant/mla_mixtral_q4.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/models/random_init.hpp"

using namespace tmoe;

namespace {

// A copy of `src` in which the router gates and experts (every "mlp." matrix) hold
// dequant(quant_Q4_0(w)), the values the custom variant computes with.
std::shared_ptr<models::MemoryWeights> dequantized_experts(const io::ModelConfig& c,
                                                           const models::WeightSource& src) {
  auto out = std::make_shared<models::MemoryWeights>("dequantized Q4_0 experts");
  for (const auto& t : models::tensor_specs(c)) {
    const models::RawTensor* r = src.find(t.name);
    REQUIRE(r != nullptr);
    REQUIRE(r->dtype == DType::f32);
    const float* f = reinterpret_cast<const float*>(r->data);
    std::vector<float> v(f, f + r->nbytes / sizeof(float));
    if (t.role == models::TensorRole::matrix && t.name.find(".mlp.") != std::string::npos) {
      const auto q = quant::quantize<quant::Q4_0>(v.data(), t.shape[0], t.shape[1]);
      for (std::size_t i = 0; i < t.shape[0]; ++i)
        quant::dequantize_row(q.view(), i, v.data() + i * t.shape[1]);
    }
    out->add<float>(t.name, t.shape, std::move(v));
  }
  return out;
}

struct Run {
  std::vector<float> logits;                   // (steps, V): every prefill row, then each decode
  std::vector<std::vector<std::size_t>> load;  // per layer: tokens per expert, summed
};

template <class Net, class State>
Run run(const Net& net, State& state, std::size_t V, const std::vector<std::int32_t>& prompt,
        std::size_t n_decode, ThreadPool& pool) {
  Run r;
  auto record_load = [&](const std::vector<models::LayerExpertStats>& st) {
    if (r.load.empty()) r.load.resize(st.size());
    for (std::size_t i = 0; i < st.size(); ++i) {
      r.load[i].resize(st[i].stats.tokens_per_expert.size());
      for (std::size_t e = 0; e < r.load[i].size(); ++e)
        r.load[i][e] += st[i].stats.tokens_per_expert[e];
    }
  };
  Matrix<float> lg(prompt.size(), V);
  net.forward(pool, state, prompt, lg.view());
  record_load(net.expert_stats());
  r.logits.assign(lg.data(), lg.data() + prompt.size() * V);
  std::int32_t tok = 3;
  for (std::size_t i = 0; i < n_decode; ++i, tok = static_cast<std::int32_t>((tok * 37 + 11) % V)) {
    Matrix<float> one(std::size_t{1}, V);
    net.forward(pool, state, std::span<const std::int32_t>(&tok, 1), one.view());
    record_load(net.expert_stats());
    r.logits.insert(r.logits.end(), one.data(), one.data() + V);
  }
  return r;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::abs(double(a[i]) - b[i]));
  return e;
}

}  // namespace

TEST_CASE("the custom MLA + Mixtral-router + Q4_0 variant matches its dequantized float twin") {
  ThreadPool pool(2);
  const io::ModelConfig c = custom::mla_mixtral_config(128, 2, 2, 8, 2, 64, 256);
  auto w = std::make_shared<models::MemoryWeights>(models::random_weights<float>(c, 11));
  const std::vector<std::int32_t> prompt = {1, 200, 45, 7, 99, 128, 3, 64, 250};
  const std::size_t n_decode = 6, V = c.vocab_size, ctx = 32;

  auto variant = custom::build_mla_mixtral_q4(c, w, ctx);
  auto vs = variant->net->new_state(ctx);
  const Run got = run(*variant->net, *vs, V, prompt, n_decode, pool);

  models::LoadOptions opt;
  opt.max_context = ctx;
  auto ref_model = models::build_model(c, dequantized_experts(c, *w), opt);
  auto rs = ref_model->new_state(ctx);
  const Run want = run(*ref_model, *rs, V, prompt, n_decode, pool);

  auto orig_model = models::build_model(c, w, opt);
  auto os = orig_model->new_state(ctx);
  const Run orig = run(*orig_model, *os, V, prompt, n_decode, pool);

  REQUIRE(got.logits.size() == want.logits.size());
  double scale = 0;
  for (float x : want.logits) scale = std::max(scale, double(std::abs(x)));
  const double err = max_abs_diff(got.logits, want.logits) / scale;
  const double quant_err = max_abs_diff(orig.logits, want.logits) / scale;
  INFO("relative error vs the dequantized twin " << err << ", Q4_0 vs original float weights "
                                                 << quant_err);
  CHECK(err <= 1.5e-2);
  CHECK(quant_err >= 5 * err);
  CHECK(got.load == want.load);
  std::size_t total = 0;
  for (auto x : got.load.at(0)) total += x;
  CHECK(total == (prompt.size() + n_decode) * c.num_experts_per_tok);
}

TEST_CASE("the custom variant reports a missing tensor by name") {
  const io::ModelConfig c = custom::mla_mixtral_config(128, 1, 2, 4, 2, 64, 64);
  auto w = std::make_shared<models::MemoryWeights>("empty");
  CHECK_THROWS_WITH_AS(custom::build_mla_mixtral_q4(c, w, 16),
                       doctest::Contains("model.layers.0.self_attn.q_a_proj.weight"), Error);
}
