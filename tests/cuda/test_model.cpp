// cuda::GqaModel, the whole Qwen2 / Llama decoder on the GPU, against Hugging Face's float32
// logits (tests/data/models/<family>/reference.safetensors) and greedy continuations
// (greedy.json), and against the CPU model on the same bf16 weights.
// Bounds: float32 weights: max |logit - ref| <= 1e-4 * max |ref| (as the CPU fixture test: fp32
// compute in a different order), through every path (cuBLAS prefill, one GEMV per token, one
// graph step per token); greedy ids identical. bf16 weights against the CPU model on the same
// bf16 weights: GEMV paths within 1e-4 * max |cpu| (both fp32 activations); the bf16 cuBLAS
// prefill rounds activations to bf16, within 3e-2 * max |cpu|.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model_test_util.hpp"
#include "tmoe/backend/cuda/gqa_model.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/tokenizer.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/runtime/session.hpp"

using namespace tmoe;

namespace {

std::string fixture(const std::string& family) {
  return std::string(TMOE_TEST_DATA_DIR) + "/models/" + family;
}

struct Ref {
  std::vector<std::vector<std::int32_t>> ids;  // B sequences of T
  std::vector<float> logits;                   // (B, T, V)
  std::size_t T = 0, V = 0;
};

Ref load_ref(const std::string& family) {
  io::SafetensorsModel ref(fixture(family) + "/reference.safetensors");
  auto ids = ref.view<std::int64_t, DExtents<2>>("input_ids");
  auto want = ref.view<float, DExtents<3>>("logits");
  Ref r;
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

// Max |got - want| / max |want| over the B x T x V logits.
enum class Path { gemm, gemv, tokens };

// Logits of every position of every reference sequence.
std::vector<float> all_logits(models::Model& m, const Ref& r, Path path) {
  ThreadPool pool(1);
  std::vector<float> out;
  for (const auto& seq : r.ids) {
    auto st = m.new_state(r.T);
    Matrix<float> lg(r.T, r.V);
    if (path == Path::tokens) {
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

cuda::ModelOptions options(Path path, std::size_t chunk = 256) {
  cuda::ModelOptions o;
  o.prefill_gemm = path == Path::gemm;
  o.chunk = chunk;
  return o;
}

std::unique_ptr<cuda::GqaModel> gpu_model(const std::string& dir, const cuda::ModelOptions& o) {
  return std::make_unique<cuda::GqaModel>(io::load_model_config(dir),
                                          std::make_shared<models::SafetensorsSource>(dir), o);
}

}  // namespace

TEST_CASE("GPU GQA models match Hugging Face logits") {
  for (const char* family : {"qwen2", "llama3"}) {
    const Ref r = load_ref(family);
    for (Path path : {Path::gemm, Path::gemv, Path::tokens}) {
      auto m = gpu_model(fixture(family), options(path));
      CHECK(m->weight_format() == "float");
      const double e = test::rel_err(all_logits(*m, r, path), r.logits);
      INFO(family << " path " << int(path) << ": max |err| / max |ref| = " << e);
      CHECK(e <= 1e-4);
    }
    // Chunks of 4 positions: the rows of several chunks are gathered.
    auto m = gpu_model(fixture(family), options(Path::gemm, 4));
    const double e = test::rel_err(all_logits(*m, r, Path::gemm), r.logits);
    INFO(family << " chunk 4: " << e);
    CHECK(e <= 1e-4);
  }
  // The sharded copy of qwen2 loads through the index.
  const Ref r = load_ref("qwen2");
  auto m = gpu_model(fixture("qwen2") + "/sharded", options(Path::gemm));
  CHECK(test::rel_err(all_logits(*m, r, Path::gemm), r.logits) <= 1e-4);
}

TEST_CASE("GPU greedy continuations match Hugging Face") {
  for (const char* family : {"qwen2", "llama3"}) {
    std::ifstream f(fixture(family) + "/greedy.json");
    const auto j = nlohmann::json::parse(f);
    const auto prompt = j["prompt_ids"].get<std::vector<std::int32_t>>();
    const auto want = j["greedy_ids"].get<std::vector<std::int32_t>>();
    auto m = gpu_model(fixture(family), {});
    // On the device: the greedy graph feeds itself.
    auto st = m->new_state(prompt.size() + want.size());
    CHECK(m->generate_greedy(*st, prompt, want.size()) == want);
    CHECK(st->size() == prompt.size() + want.size() - 1);
    // Through forward(): host argmax of downloaded logits, one graph step per token.
    ThreadPool pool(1);
    auto st2 = m->new_state(prompt.size() + want.size());
    Matrix<float> lg(1, m->vocab_size());
    m->forward(pool, *st2, prompt, lg.view());
    std::vector<std::int32_t> got;
    for (std::size_t i = 0; i < want.size(); ++i) {
      std::int32_t best = 0;
      for (std::size_t v = 1; v < m->vocab_size(); ++v)
        if (lg(0, v) > lg(0, std::size_t(best))) best = std::int32_t(v);
      got.push_back(best);
      if (i + 1 < want.size())
        m->forward(pool, *st2, std::span<const std::int32_t>(&got.back(), 1), lg.view());
    }
    CHECK(got == want);
    // A second greedy run on a fresh state reuses nothing stale.
    auto st3 = m->new_state(prompt.size() + want.size());
    CHECK(m->generate_greedy(*st3, prompt, want.size()) == want);
    // The fused decode attention kernel gives the same continuation.
    cuda::ModelOptions fo;
    fo.fused_decode_attention = true;
    auto mf = gpu_model(fixture(family), fo);
    auto st4 = mf->new_state(prompt.size() + want.size());
    CHECK(mf->generate_greedy(*st4, prompt, want.size()) == want);
  }
}

TEST_CASE("GPU sampled continuations (generate_sampled)") {
  std::ifstream f(fixture("qwen2") + "/greedy.json");
  const auto j = nlohmann::json::parse(f);
  const auto prompt = j["prompt_ids"].get<std::vector<std::int32_t>>();
  const auto want = j["greedy_ids"].get<std::vector<std::int32_t>>();
  const std::size_t n = want.size();
  auto m = gpu_model(fixture("qwen2"), {});
  // Greedy configs give the greedy continuation.
  SamplerConfig g;
  g.temperature = 0.f;
  auto st = m->new_state(prompt.size() + n);
  CHECK(m->generate_sampled(*st, prompt, n, g) == want);
  g.temperature = 1.5f, g.top_k = 1;
  auto st1 = m->new_state(prompt.size() + n);
  CHECK(m->generate_sampled(*st1, prompt, n, g) == want);
  // A seed gives the same tokens every time; all inside the vocabulary.
  SamplerConfig c;
  c.temperature = 1.0f, c.top_p = 0.9f, c.top_k = 40, c.seed = 7;
  auto a = m->new_state(prompt.size() + n);
  auto b = m->new_state(prompt.size() + n);
  const auto ta = m->generate_sampled(*a, prompt, n, c);
  CHECK(m->generate_sampled(*b, prompt, n, c) == ta);
  for (std::int32_t t : ta) CHECK((t >= 0 && std::size_t(t) < m->vocab_size()));
  // Greedy with a repetition penalty: the same tokens as the CPU Sampler over the GPU's own
  // logits (forward(), one graph step per token), prompt included in the penalty's window.
  SamplerConfig pc;
  pc.temperature = 0.f, pc.repetition_penalty = 3.f, pc.repetition_window = 8;
  auto sp = m->new_state(prompt.size() + n);
  const auto got = m->generate_sampled(*sp, prompt, n, pc);
  const auto host = test::host_sampled(*m, prompt, n, pc);
  CHECK(got == host);
  WARN_MESSAGE(host != want, "the penalty did not change the continuation");
}

// Session::generate on a GPU model draws on the device (Model::generate_on_device ->
// generate_sampled_stream): the tokens of generate_sampled with the same config, cut at a stop id
// with the state holding exactly the session's tokens, and chunks of any size give the same ids.
TEST_CASE("GPU Session generation (device sampling, streaming, stop ids)") {
  std::ifstream f(fixture("qwen2") + "/greedy.json");
  const auto j = nlohmann::json::parse(f);
  const auto prompt = j["prompt_ids"].get<std::vector<std::int32_t>>();
  const std::size_t n = 12;
  auto m = gpu_model(fixture("qwen2"), {});
  REQUIRE(m->has_device_generation());
  SamplerConfig c;
  c.temperature = 1.0f, c.top_p = 0.9f, c.seed = 11;
  auto ref_state = m->new_state(prompt.size() + n);
  const auto want = m->generate_sampled(*ref_state, prompt, n, c);
  for (std::size_t chunk : {std::size_t{1}, std::size_t{5}, std::size_t{64}}) {
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
    CHECK(st->size() == prompt.size() + n - 1);
  }
  const auto tok = io::Tokenizer::from_file(std::string(TMOE_TEST_DATA_DIR) +
                                            "/tokenizers/qwen3/tokenizer.json");
  ThreadPool pool(1);
  Session session(*m, pool, prompt.size() + n);
  GenerateOptions g;
  g.max_new_tokens = n;
  g.sampler = c;
  GenerateStats stats;
  CHECK(session.generate(prompt, tok, g, nullptr, &stats) == want);
  CHECK(stats.stop_reason == "length");
  // Stop at the 5th token (an EOS id): the session holds prompt + the 4 tokens before it.
  g.stop_ids = {want[4]};
  Session s2(*m, pool, prompt.size() + n);
  const auto cut = s2.generate(prompt, tok, g, nullptr, &stats);
  const auto first = std::find(want.begin(), want.end(), want[4]) - want.begin();
  CHECK(cut == std::vector<std::int32_t>(want.begin(), want.begin() + first + 1));
  CHECK(stats.stop_reason == "eos");
  CHECK(s2.tokens().size() == prompt.size() + std::size_t(first));
  // A capacity below prompt + n stops with "context full" after the tokens that fit.
  g.stop_ids.clear();
  Session s3(*m, pool, prompt.size() + 3);
  CHECK(s3.generate(prompt, tok, g, nullptr, &stats) ==
        std::vector<std::int32_t>(want.begin(), want.begin() + 4));
  CHECK(stats.stop_reason == "context full");
}

TEST_CASE("GPU bf16 weights agree with the CPU model on the same weights") {
  // qwen2's weights with every matrix rounded to bf16 (vectors stay float).
  const std::string dir = fixture("qwen2");
  const io::ModelConfig cfg = io::load_model_config(dir);
  models::SafetensorsSource src(dir);
  auto mem = std::make_shared<models::MemoryWeights>("qwen2 as bf16");
  for (const auto& name : src.checkpoint().names()) {
    if (!name.starts_with("model.") && !name.starts_with("lm_head.")) continue;  // not weights
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
  const Ref r = load_ref("qwen2");
  auto cpu = models::build_model(cfg, mem);
  REQUIRE(cpu->weight_format() == "bf16");
  const auto want = all_logits(*cpu, r, Path::gemm);
  for (Path path : {Path::gemv, Path::tokens, Path::gemm}) {
    cuda::GqaModel gpu(cfg, mem, options(path));
    CHECK(gpu.weight_format() == "bf16");
    const double e = test::rel_err(all_logits(gpu, r, path), want);
    INFO("bf16 path " << int(path) << ": max |err| / max |cpu| = " << e);
    CHECK(e <= (path == Path::gemm ? 3e-2 : 1e-4));
  }
}

TEST_CASE("GPU model errors are one clear line") {
  CHECK_THROWS_WITH_AS(gpu_model(fixture("mixtral"), {}),
                       doctest::Contains("is not supported on CUDA yet"), tmoe::Error);
  CHECK_THROWS_WITH_AS(gpu_model(fixture("deepseek_v3"), {}),
                       doctest::Contains("is not supported on CUDA yet"), tmoe::Error);
  auto m = gpu_model(fixture("qwen2"), {});
  ThreadPool pool(1);
  auto st = m->new_state(4);
  Matrix<float> lg(1, m->vocab_size());
  const std::vector<std::int32_t> bad = {1, 512};
  CHECK_THROWS_WITH_AS(m->forward(pool, *st, bad, lg.view()),
                       doctest::Contains("outside the vocabulary of 512"), tmoe::Error);
  const std::vector<std::int32_t> five = {1, 2, 3, 4, 5};
  CHECK_THROWS_WITH_AS(m->forward(pool, *st, five, lg.view()), doctest::Contains("context full"),
                       tmoe::Error);
  CHECK_THROWS_WITH_AS(m->new_state(100000), doctest::Contains("context of 100000"), tmoe::Error);
}
