// cuda::DeepseekModel (MLA + dense and MoE layers on the GPU) against Hugging Face's float32 logits
// of the deepseek_v3 fixtures (with q-LoRA, without, and the FP8 block-quantized copy whose
// experts and projections stay FP8 on the device), their greedy continuations, and the CPU model
// on the same weights rounded to bf16; and with ModelOptions::mla_bf16_cache (the bf16 latent cache
// on the tensor cores) within 1e-2 * max |ref| of HF's logits (measured 3.3e-3, 2.4e-3).
// Bounds: max |logit - ref| <= 1e-4 * max |ref| (the CPU fixture test's bound: fp32 compute in a
// different order), the whole sequence in one forward and token by token; greedy ids identical;
// bf16 weights against the CPU model on the same bf16 weights within 1e-4 * max |cpu| (both keep
// fp32 activations).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model_test_util.hpp"
#include "tmoe/backend/cuda/deepseek_model.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/tokenizer.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/runtime/session.hpp"

using namespace tmoe;

namespace {

std::string ds_fixture(const std::string& family) {
  return std::string(TMOE_TEST_DATA_DIR) + "/models/" + family;
}

struct DsRef {
  std::vector<std::vector<std::int32_t>> ids;
  std::vector<float> logits;  // (B, T, V)
  std::size_t T = 0, V = 0;
};

DsRef ds_load_ref(const std::string& family) {
  io::SafetensorsModel ref(ds_fixture(family) + "/reference.safetensors");
  auto ids = ref.view<std::int64_t, DExtents<2>>("input_ids");
  auto want = ref.view<float, DExtents<3>>("logits");
  DsRef r;
  r.T = ids.cols(), r.V = want.extent(2);
  for (std::size_t b = 0; b < ids.rows(); ++b) {
    r.ids.emplace_back();
    for (std::size_t t = 0; t < r.T; ++t) {
      r.ids.back().push_back(static_cast<std::int32_t>(ids(b, t)));
      for (std::size_t v = 0; v < r.V; ++v) r.logits.push_back(want(b, t, v));
    }
  }
  return r;
}

std::vector<float> ds_logits(models::Model& m, const DsRef& r, bool per_token) {
  ThreadPool pool(1);
  std::vector<float> out;
  for (const auto& seq : r.ids) {
    auto st = m.new_state(r.T);
    Matrix<float> lg(r.T, r.V);
    if (per_token) {
      for (std::size_t t = 0; t < r.T; ++t)
        m.forward(pool, *st, std::span<const std::int32_t>(&seq[t], 1),
                  MatrixView<float>(lg.row(t), 1, r.V));
    } else {
      m.forward(pool, *st, seq, lg.view());
    }
    out.insert(out.end(), lg.data(), lg.data() + r.T * r.V);
  }
  return out;
}

std::unique_ptr<cuda::DeepseekModel> ds_model(const std::string& dir,
                                              const cuda::ModelOptions& o = {}) {
  return std::make_unique<cuda::DeepseekModel>(io::load_model_config(dir),
                                               std::make_shared<models::SafetensorsSource>(dir), o);
}

}  // namespace

TEST_CASE("GPU DeepSeek-V3 models match Hugging Face logits") {
  for (const char* family : {"deepseek_v3", "deepseek_v3_nolora", "deepseek_v3_fp8"}) {
    const DsRef r = ds_load_ref(family);
    auto m = ds_model(ds_fixture(family));
    CHECK(m->weight_format() == (std::string(family) == "deepseek_v3_fp8" ? "fp8_block" : "float"));
    for (bool per_token : {false, true}) {
      const double e = test::rel_err(ds_logits(*m, r, per_token), r.logits);
      MESSAGE(std::string(family) << (per_token ? " token by token" : " whole sequence")
                                  << ": max |err| / max |ref| = " << e);
      // The FP8 model's whole sequence runs the batched prefill on bf16 operands
      // (test_deepseek_prefill.cpp's bound).
      CHECK(e <= (!per_token && std::string(family) == "deepseek_v3_fp8" ? 3e-2 : 1e-4));
    }
    cuda::ModelOptions no_graphs;  // token by token without the decode graph
    no_graphs.graphs = false, no_graphs.prefill_gemm = false;
    auto mg = ds_model(ds_fixture(family), no_graphs);
    const double e = test::rel_err(ds_logits(*mg, r, false), r.logits);
    INFO(family << " without graphs: " << e);
    CHECK(e <= 1e-4);
  }
}

TEST_CASE("GPU DeepSeek-V3 greedy continuations match Hugging Face") {
  for (const char* family : {"deepseek_v3", "deepseek_v3_nolora", "deepseek_v3_fp8"}) {
    std::ifstream f(ds_fixture(family) + "/greedy.json");
    const auto j = nlohmann::json::parse(f);
    const auto prompt = j["prompt_ids"].get<std::vector<std::int32_t>>();
    const auto want = j["greedy_ids"].get<std::vector<std::int32_t>>();
    auto m = ds_model(ds_fixture(family));
    ThreadPool pool(1);
    auto st = m->new_state(prompt.size() + want.size());
    Matrix<float> lg(1, m->vocab_size());
    m->forward(pool, *st, prompt, lg.view());
    std::vector<std::int32_t> got;
    for (std::size_t i = 0; i < want.size(); ++i) {
      std::int32_t best = 0;
      for (std::size_t v = 1; v < m->vocab_size(); ++v)
        if (lg(0, v) > lg(0, std::size_t(best))) best = std::int32_t(v);
      got.push_back(best);
      if (i + 1 < want.size())
        m->forward(pool, *st, std::span<const std::int32_t>(&got.back(), 1), lg.view());
    }
    INFO(family);
    CHECK(got == want);
    // On the device (generate_sampled with a greedy config: step + draw graph replays).
    SamplerConfig g;
    g.temperature = 0.f;
    auto sd = m->new_state(prompt.size() + want.size());
    CHECK(m->generate_sampled(*sd, prompt, want.size(), g) == want);
    CHECK(sd->size() == prompt.size() + want.size() - 1);
  }
}

// Expert load: the GPU routers' device counts (expert_stats) equal the CPU model's routing of the
// same prompt, layer by layer, expert by expert; after a device generation of n tokens from a
// p-token prompt they cover p + n - 1 steps (chunk 64: no run-ahead past n).
TEST_CASE("GPU DeepSeek expert load statistics match the CPU model's routing") {
  std::ifstream f(ds_fixture("deepseek_v3") + "/greedy.json");
  const auto j = nlohmann::json::parse(f);
  const auto prompt = j["prompt_ids"].get<std::vector<std::int32_t>>();
  const std::string dir = ds_fixture("deepseek_v3");
  auto gpu = ds_model(dir);
  auto cpu = models::load_model(dir);
  ThreadPool pool(2);
  Matrix<float> lg(1, gpu->vocab_size());
  auto gs = gpu->new_state(prompt.size());
  auto cs = cpu->new_state(prompt.size());
  gpu->forward(pool, *gs, prompt, lg.view());
  cpu->forward(pool, *cs, prompt, lg.view());
  const auto g = gpu->expert_stats(), c = cpu->expert_stats();
  REQUIRE(!c.empty());
  REQUIRE(g.size() == c.size());
  for (std::size_t i = 0; i < c.size(); ++i) {
    CAPTURE(c[i].layer);
    CHECK(g[i].layer == c[i].layer);
    CHECK(g[i].stats.tokens == prompt.size());
    CHECK(g[i].stats.tokens_per_expert == c[i].stats.tokens_per_expert);
    CHECK(g[i].stats.active_experts == c[i].stats.active_experts);
    CHECK(g[i].stats.max_over_mean == doctest::Approx(c[i].stats.max_over_mean));
  }
  const std::size_t n = 6, k = gpu->config().num_experts_per_tok;
  SamplerConfig sc;
  sc.seed = 3;
  auto st = gpu->new_state(prompt.size() + n);
  gpu->generate_sampled(*st, prompt, n, sc);
  for (const auto& l : gpu->expert_stats()) {
    std::size_t sum = 0;
    for (std::size_t v : l.stats.tokens_per_expert) sum += v;
    CHECK(l.stats.tokens == prompt.size() + n - 1);
    CHECK(sum == (prompt.size() + n - 1) * k);
  }
}

// Sampling on the device (generate_sampled_stream, Session::generate through
// Model::generate_on_device): a seed repeats its tokens, chunks of 1 and 64 give the same ids,
// greedy with a repetition penalty gives the CPU Sampler's tokens over the GPU's own logits
// (forward(), prompt in the penalty's window), and a Session stops at a stop id holding exactly
// the prompt and the tokens before it.
TEST_CASE("GPU DeepSeek sampled continuations and Session generation") {
  std::ifstream f(ds_fixture("deepseek_v3") + "/greedy.json");
  const auto j = nlohmann::json::parse(f);
  const auto prompt = j["prompt_ids"].get<std::vector<std::int32_t>>();
  const std::size_t n = 10;
  auto m = ds_model(ds_fixture("deepseek_v3"));
  REQUIRE(m->has_device_generation());
  SamplerConfig c;
  c.temperature = 1.0f, c.top_p = 0.9f, c.seed = 5;
  auto a = m->new_state(prompt.size() + n);
  const auto want = m->generate_sampled(*a, prompt, n, c);
  for (std::int32_t t : want) CHECK((t >= 0 && std::size_t(t) < m->vocab_size()));
  for (std::size_t chunk : {std::size_t{1}, std::size_t{64}}) {
    auto st = m->new_state(prompt.size() + n);
    std::vector<std::int32_t> got;
    const std::size_t k = m->generate_sampled_stream(
        *st, prompt, n, c,
        [&](std::int32_t id) {
          got.push_back(id);
          return true;
        },
        chunk);
    CHECK(k == n);
    CHECK(got == want);
  }
  SamplerConfig pc;
  pc.temperature = 0.f, pc.repetition_penalty = 3.f, pc.repetition_window = 8;
  auto sp = m->new_state(prompt.size() + n);
  const auto pen = m->generate_sampled(*sp, prompt, n, pc);
  const auto host = test::host_sampled(*m, prompt, n, pc);
  CHECK(pen == host);
  const auto tok = io::Tokenizer::from_file(std::string(TMOE_TEST_DATA_DIR) +
                                            "/tokenizers/deepseek_v3/tokenizer.json");
  ThreadPool pool(1);
  Session session(*m, pool, prompt.size() + n);
  GenerateOptions g;
  g.max_new_tokens = n;
  g.sampler = c;
  g.stop_ids = {want[3]};
  GenerateStats stats;
  const auto cut = session.generate(prompt, tok, g, nullptr, &stats);
  const auto first = std::find(want.begin(), want.end(), want[3]) - want.begin();
  CHECK(cut == std::vector<std::int32_t>(want.begin(), want.begin() + first + 1));
  CHECK(stats.stop_reason == "eos");
  CHECK(session.tokens().size() == prompt.size() + std::size_t(first));
}

TEST_CASE("GPU DeepSeek bf16 weights agree with the CPU model on the same weights") {
  const std::string dir = ds_fixture("deepseek_v3");
  const io::ModelConfig cfg = io::load_model_config(dir);
  models::SafetensorsSource src(dir);
  auto mem = std::make_shared<models::MemoryWeights>("deepseek_v3 as bf16");
  for (const auto& name : src.checkpoint().names()) {
    if (!name.starts_with("model.") && !name.starts_with("lm_head.")) continue;
    const models::RawTensor* t = src.find(name);
    REQUIRE(t->dtype == DType::f32);
    std::vector<float> v(t->nbytes / 4);
    std::memcpy(v.data(), t->data, t->nbytes);
    if (t->shape.size() == 2) {
      std::vector<bf16> b(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) b[i] = bf16::from_float(v[i]);
      mem->add<bf16>(name, t->shape, std::move(b));
    } else {
      mem->add<float>(name, t->shape, std::move(v));
    }
  }
  const DsRef r = ds_load_ref("deepseek_v3");
  auto cpu = models::build_model(cfg, mem);
  const auto want = ds_logits(*cpu, r, false);
  cuda::ModelOptions token;
  token.prefill_gemm = false;
  cuda::DeepseekModel gpu(cfg, mem, token);
  CHECK(gpu.weight_format() == "bf16");
  const double e = test::rel_err(ds_logits(gpu, r, false), want);
  MESSAGE("bf16: max |err| / max |cpu| = " << e);
  CHECK(e <= 1e-4);
  // The batched prefill rounds the activations to bf16 for the GEMMs: GqaModel's 3e-2 bound.
  cuda::DeepseekModel batched(cfg, mem);
  const double eb = test::rel_err(ds_logits(batched, r, false), want);
  MESSAGE("bf16, batched prefill: max |err| / max |cpu| = " << eb);
  CHECK(eb <= 3e-2);
}

TEST_CASE("GPU DeepSeek with the bf16 latent cache (tensor-core MLA) stays near the logits") {
  // ModelOptions::mla_bf16_cache: every cached latent rounded to bf16 (relative 2^-9), q and the
  // softmax weights too; through two layers and the LM head the logits move by about 1e-3 of their
  // range. Bound: 1e-2 * max |ref| (100x the float cache's), against HF's float32 logits.
  for (const char* family : {"deepseek_v3", "deepseek_v3_nolora"}) {
    const DsRef r = ds_load_ref(family);
    cuda::ModelOptions o;
    o.mla_bf16_cache = true;
    auto m = ds_model(ds_fixture(family), o);
    for (bool per_token : {false, true}) {
      const double e = test::rel_err(ds_logits(*m, r, per_token), r.logits);
      MESSAGE(std::string(family) << " bf16 cache"
                                  << std::string(per_token ? " token by token" : "")
                                  << ": max |err| / max |ref| = " << e);
      CHECK(e <= 1e-2);
    }
  }
}

TEST_CASE("GPU DeepSeek model errors are one clear line") {
  auto m = ds_model(ds_fixture("deepseek_v3"));
  ThreadPool pool(1);
  auto st = m->new_state(4);
  Matrix<float> lg(1, m->vocab_size());
  const std::vector<std::int32_t> bad = {1, 512};
  CHECK_THROWS_WITH_AS(m->forward(pool, *st, bad, lg.view()),
                       doctest::Contains("outside the vocabulary of 512"), tmoe::Error);
  const std::vector<std::int32_t> five = {1, 2, 3, 4, 5};
  CHECK_THROWS_WITH_AS(m->forward(pool, *st, five, lg.view()), doctest::Contains("context full"),
                       tmoe::Error);
  CHECK_THROWS_WITH_AS(
      cuda::DeepseekModel(io::load_model_config(ds_fixture("qwen2")),
                          std::make_shared<models::SafetensorsSource>(ds_fixture("qwen2"))),
      doctest::Contains("has no MLA attention"), tmoe::Error);
}
