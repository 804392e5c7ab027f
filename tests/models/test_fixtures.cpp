// Parity with Hugging Face transformers (float32, eager attention): every fixture family's logits
// for the reference input_ids, and its greedy continuation through the KV-cache decode path.
// Fixtures: tests/data/models/<family>/ (scripts/fixtures/make_model_fixtures.py).
// Bound: max |logit - ref| <= 1e-4 * max |ref| (float32 compute in a different order).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/io/safetensors.hpp"
#include "tmoe/models/default_model.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/runtime/session.hpp"

using namespace tmoe;

namespace {

std::string fixture(const std::string& family) {
  return std::string(TMOE_TEST_DATA_DIR) + "/models/" + family;
}

void check_logits(const std::string& family, const std::string& dir, MlaForm form) {
  ThreadPool pool(2);
  models::LoadOptions opt;
  opt.mla_form = form;
  auto model = models::load_model(dir, opt);
  io::SafetensorsModel ref(fixture(family) + "/reference.safetensors");
  auto ids = ref.view<std::int64_t, DExtents<2>>("input_ids");
  auto want = ref.view<float, DExtents<3>>("logits");
  const std::size_t B = ids.rows(), T = ids.cols(), V = model->vocab_size();
  REQUIRE(want.extent(2) == V);
  double max_err = 0, max_ref = 0;
  for (std::size_t b = 0; b < B; ++b) {
    std::vector<std::int32_t> tok(T);
    for (std::size_t t = 0; t < T; ++t) tok[t] = static_cast<std::int32_t>(ids(b, t));
    auto state = model->new_state(T);
    Matrix<float> logits(T, V);
    model->forward(pool, *state, tok, logits.view());
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t v = 0; v < V; ++v) {
        max_err = std::max(max_err, std::abs(double(logits(t, v)) - double(want(b, t, v))));
        max_ref = std::max(max_ref, std::abs(double(want(b, t, v))));
      }
  }
  INFO(family << ": max |err| " << max_err << ", max |ref| " << max_ref);
  CHECK(max_err <= 1e-4 * max_ref);
}

void check_greedy(const std::string& family, MlaForm form) {
  ThreadPool pool(2);
  models::LoadOptions opt;
  opt.mla_form = form;
  auto model = models::load_model(fixture(family), opt);
  std::ifstream f(fixture(family) + "/greedy.json");
  const auto j = nlohmann::json::parse(f);
  std::vector<std::int32_t> prompt = j["prompt_ids"].get<std::vector<std::int32_t>>();
  const auto want = j["greedy_ids"].get<std::vector<std::int32_t>>();
  auto state = model->new_state(prompt.size() + want.size());
  Matrix<float> logits(1, model->vocab_size());
  model->forward(pool, *state, prompt, logits.view());
  std::vector<std::int32_t> got;
  for (std::size_t i = 0; i < want.size(); ++i) {
    std::int32_t best = 0;
    for (std::size_t v = 1; v < model->vocab_size(); ++v)
      if (logits(0, v) > logits(0, static_cast<std::size_t>(best)))
        best = static_cast<std::int32_t>(v);
    got.push_back(best);
    if (i + 1 < want.size())
      model->forward(pool, *state, std::span<const std::int32_t>(&got.back(), 1), logits.view());
  }
  CHECK(got == want);
}

// Logits (T, V) of `model` for row `b` of the fixture's reference input_ids.
Matrix<float> reference_logits(const models::Model& model, const std::string& family,
                               std::size_t b) {
  ThreadPool pool(2);
  io::SafetensorsModel ref(fixture(family) + "/reference.safetensors");
  auto ids = ref.view<std::int64_t, DExtents<2>>("input_ids");
  const std::size_t T = ids.cols();
  std::vector<std::int32_t> tok(T);
  for (std::size_t t = 0; t < T; ++t) tok[t] = static_cast<std::int32_t>(ids(b, t));
  auto state = model.new_state(T);
  Matrix<float> logits(T, model.vocab_size());
  model.forward(pool, *state, tok, logits.view());
  return logits;
}

}  // namespace

TEST_CASE("fixture logits match Hugging Face") {
  for (const char* family :
       {"qwen2", "llama3", "mixtral", "deepseek_v3", "deepseek_v3_nolora", "deepseek_v3_fp8"}) {
    SUBCASE(family) {
      check_logits(family, fixture(family), MlaForm::absorbed);
      if (std::string(family).starts_with("deepseek"))
        check_logits(family, fixture(family), MlaForm::naive);
    }
  }
}

TEST_CASE("a sharded checkpoint with an index gives the same logits") {
  check_logits("qwen2", fixture("qwen2") + "/sharded", MlaForm::absorbed);
}

TEST_CASE("greedy continuations match Hugging Face through the decode path") {
  for (const char* family :
       {"qwen2", "llama3", "mixtral", "deepseek_v3", "deepseek_v3_nolora", "deepseek_v3_fp8"}) {
    SUBCASE(family) {
      check_greedy(family, MlaForm::absorbed);
    }
  }
}

TEST_CASE("the built-in default model runs the whole pipeline and records expert load") {
  ThreadPool pool(2);
  auto model = models::default_model();
  const auto tok = models::default_tokenizer();
  CHECK(model->weight_format() == "bf16");
  const auto ids = tok.encode("<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n");
  REQUIRE(ids.size() == 7);  // 4 special tokens + H, i, newline
  CHECK(ids[0] == 256);
  Session s(*model, pool, 64);
  GenerateOptions g;
  g.max_new_tokens = 8;
  g.sampler.temperature = 0.f;
  GenerateStats st;
  const auto out = s.generate(ids, tok, g, {}, &st);
  CHECK(out.size() == 8);
  CHECK(st.new_tokens == 8);
  REQUIRE(st.expert_tokens.size() == 3);  // layers 1..3 are MoE
  for (const auto& layer : st.expert_tokens) {
    std::size_t total = 0;
    for (auto x : layer) total += x;
    CHECK(total == (ids.size() + 7) * 4);  // every token run picks top-4
  }
  // Greedy is deterministic, and a second turn reuses the cached prefix.
  Session s2(*model, pool, 64);
  CHECK(s2.generate(ids, tok, g, {}, nullptr) == out);
  std::vector<std::int32_t> more(ids);
  more.insert(more.end(), out.begin(), out.end());
  more.push_back(65);
  GenerateStats st2;
  g.max_new_tokens = 1;
  s2.generate(more, tok, g, {}, &st2);
  CHECK(st2.reused_tokens == ids.size() + out.size() - 1);
}

namespace {
// A CPU model that claims device generation and runs it on the host, greedily (forward + argmax):
// Session::generate's device path (the CUDA models') without a GPU.
class HostDeviceModel : public models::Model {
 public:
  HostDeviceModel(const models::Model& m, ThreadPool& pool)
      : Model(m.config(), m.max_context()), m_(&m), pool_(&pool) {}
  std::unique_ptr<models::State> new_state(std::size_t capacity) const override {
    return m_->new_state(capacity);
  }
  void forward(ThreadPool& pool, models::State& st, std::span<const std::int32_t> tokens,
               MatrixView<float> logits) const override {
    m_->forward(pool, st, tokens, logits);
  }
  std::vector<models::LayerExpertStats> expert_stats() const override { return m_->expert_stats(); }
  std::size_t decode_weight_bytes() const override { return m_->decode_weight_bytes(); }
  std::string weight_format() const override { return m_->weight_format(); }
  bool has_device_generation() const override { return true; }
  std::size_t generate_on_device(models::State& st, std::span<const std::int32_t> prompt,
                                 std::size_t n, const SamplerConfig& cfg,
                                 const std::function<bool(std::int32_t)>& on) const override {
    REQUIRE(cfg.temperature == 0.f);
    Matrix<float> logits(1, vocab_size());
    m_->forward(*pool_, st, prompt, logits.view());
    std::size_t m = 0;
    while (m < n) {
      const float* row = logits.row(0);
      const auto id = static_cast<std::int32_t>(std::max_element(row, row + vocab_size()) - row);
      ++m;
      if (!on(id) || m == n) break;
      m_->forward(*pool_, st, std::span<const std::int32_t>(&id, 1), logits.view());
    }
    return m;
  }

 private:
  const models::Model* m_;
  ThreadPool* pool_;
};
}  // namespace

// Session::generate through Model::generate_on_device: the same tokens and bookkeeping as the
// host path, and a callback that throws leaves the session where its tokens() say it is.
TEST_CASE("Session's device-generation path keeps tokens() and the cache in step") {
  ThreadPool pool(2);
  auto model = models::default_model();
  HostDeviceModel dev(*model, pool);
  const auto tok = models::default_tokenizer();
  const auto ids = tok.encode("<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n");
  GenerateOptions g;
  g.max_new_tokens = 6;
  g.sampler.temperature = 0.f;
  Session host(*model, pool, 64), device(dev, pool, 64);
  const auto out = host.generate(ids, tok, g, {});
  CHECK(device.generate(ids, tok, g, {}) == out);
  // Both hold the context and the generated tokens but the last (not run yet).
  CHECK(device.tokens() == host.tokens());
  REQUIRE(device.tokens().size() == ids.size() + out.size() - 1);
  // A callback that throws at the first piece of text (after the device ran the last context
  // token and drew at least one).
  Session s(dev, pool, 64);
  g.max_new_tokens = 32;
  CHECK_THROWS_WITH(
      s.generate(ids, tok, g,
                 [&](const std::string&) -> bool { throw std::runtime_error("stop here"); }),
      "stop here");
  CHECK(s.tokens().size() == ids.size() - 1);
  // The cache holds what tokens() lists: pushing the last context token gives the logits of a
  // fresh session that ran the same calls (the context but its last token, then that token).
  s.push(ids.back());
  Session fresh(*model, pool, 64);
  fresh.set_context(std::span<const std::int32_t>(ids).first(ids.size() - 1));
  fresh.push(ids.back());
  for (std::size_t v = 0; v < model->vocab_size(); ++v)
    REQUIRE(s.last_logits()(0, v) == fresh.last_logits()(0, v));
}

TEST_CASE("bad model folders fail with one clear error") {
  CHECK_THROWS_WITH_AS(models::load_model(std::string(TMOE_TEST_DATA_DIR) + "/no_such_model"),
                       doctest::Contains("no_such_model"), Error);
}

// The bf16 weight path: every matrix of a fixture rounded to bf16 (norm weights and biases stay
// float). Against the float path over the same rounded weights the bf16 kernels (float32
// accumulation, exact bf16 -> float widening) must agree within 1e-4 * max |logit|; against HF's
// float32 reference the rounding of the weights themselves (2^-9 relative each) is allowed
// 2e-2 * max |ref| (measured 0.4-0.7%).
TEST_CASE("bf16 weights: the bf16 path equals the float path over the same rounded weights") {
  for (const char* family : {"qwen2", "llama3", "mixtral", "deepseek_v3"}) {
    SUBCASE(family) {
      const io::ModelConfig cfg = io::load_model_config(fixture(family));
      models::SafetensorsSource src(fixture(family));
      auto wb = std::make_shared<models::MemoryWeights>(std::string("bf16 ") + family);
      auto wf = std::make_shared<models::MemoryWeights>(std::string("rounded ") + family);
      for (const auto& name : src.checkpoint().names()) {
        if (!name.starts_with("model.") && !name.starts_with("lm_head.")) continue;
        const models::RawTensor* t = src.find(name);
        REQUIRE(t->dtype == DType::f32);
        std::vector<float> v(t->nbytes / 4);
        std::memcpy(v.data(), t->data, t->nbytes);
        if (t->shape.size() == 2) {
          std::vector<bf16> r(v.size());
          for (std::size_t i = 0; i < v.size(); ++i)
            r[i] = bf16::from_float(v[i]), v[i] = to_float(r[i]);
          wb->add<bf16>(name, t->shape, std::move(r));
        } else {
          wb->add<float>(name, t->shape, v);
        }
        wf->add<float>(name, t->shape, std::move(v));
      }
      const auto mb = models::build_model(cfg, wb), mf = models::build_model(cfg, wf);
      CHECK(mb->weight_format() == "bf16");
      CHECK(mf->weight_format() == "float");
      io::SafetensorsModel ref(fixture(family) + "/reference.safetensors");
      auto want = ref.view<float, DExtents<3>>("logits");
      const auto lb = reference_logits(*mb, family, 0), lf = reference_logits(*mf, family, 0);
      double err = 0, err_ref = 0, scale = 0, scale_ref = 0;
      for (std::size_t t = 0; t < lb.rows(); ++t)
        for (std::size_t v = 0; v < lb.cols(); ++v) {
          err = std::max(err, std::abs(double(lb(t, v)) - double(lf(t, v))));
          scale = std::max(scale, std::abs(double(lf(t, v))));
          err_ref = std::max(err_ref, std::abs(double(lb(t, v)) - double(want(0, t, v))));
          scale_ref = std::max(scale_ref, std::abs(double(want(0, t, v))));
        }
      INFO(std::string(family) << ": bf16 vs float " << err / scale << ", bf16 vs HF "
                               << err_ref / scale_ref);
      CHECK(err <= 1e-4 * scale);
      CHECK(err_ref <= 2e-2 * scale_ref);
    }
  }
}
