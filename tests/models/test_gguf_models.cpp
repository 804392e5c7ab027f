// GGUF export and loading over every fixture family: export (models/gguf_export.hpp) to a temp
// dir, load back through GgufSource, compare with the safetensors path.
// Bounds:
//   F32 export: deepseek_v3* and qwen2 logits are bit-identical to the safetensors path (same
//     values, same order of arithmetic); llama3 and mixtral (llama arch) within 1e-5 * max |logit|
//     (measured 3.3e-6 / 13.9 for mixtral): the file rotates adjacent pairs of permuted q/k rows,
//     which changes the order of the q.k sums, and Llama 3's rope factors come from
//     rope_freqs.weight instead of the closed form. The greedy continuation equals greedy.json.
//   Q8_0 export (run in place as AnyFormat): per position, max |logit - HF reference| <=
//     0.04 * max |ref| for every position of the dense models and >= 75% of the positions of the
//     MoE models: a perturbed hidden state can flip a near-tied expert choice and make a whole
//     row jump (measured: all 22 rows within for every fixture except mixtral, 21 of 22; max
//     |err| / max |ref|: qwen2 0.018, llama3 0.030, deepseek_v3 0.026, mixtral 0.19).
//   Mixed Q4_0 / Q6_K / Q8_0 / BF16 / F16 export: the same with 0.1 (qwen2 all rows, deepseek_v3
//     18 of 22), MLA absorbed and naive.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>
#include <nlohmann/json.hpp>

#include "tmoe/io/safetensors.hpp"
#include "tmoe/models/gguf_export.hpp"
#include "tmoe/models/model.hpp"

using namespace tmoe;

namespace {

std::string fixture(const std::string& family) {
  return std::string(TMOE_TEST_DATA_DIR) + "/models/" + family;
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path =
        std::filesystem::temp_directory_path() / ("tmoe_gguf_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

const TempDir& tmp() {
  static TempDir d;
  return d;
}

std::string export_fixture(const std::string& family, io::GgmlType type) {
  const std::string out = tmp().file(family + "_" + std::to_string(int(type)) + ".gguf");
  const auto cfg = io::load_model_config(fixture(family));
  models::SafetensorsSource src(fixture(family));
  models::GgufExportOptions opt;
  opt.type = type;
  models::export_gguf(cfg, src, nullptr, opt, out);
  return out;
}

// Logits of every reference sequence: (B * T, V).
std::vector<float> run(const models::Model& m, const std::string& family) {
  ThreadPool pool(2);
  io::SafetensorsModel ref(fixture(family) + "/reference.safetensors");
  auto ids = ref.view<std::int64_t, DExtents<2>>("input_ids");
  const std::size_t B = ids.rows(), T = ids.cols(), V = m.vocab_size();
  std::vector<float> out;
  for (std::size_t b = 0; b < B; ++b) {
    std::vector<std::int32_t> tok(T);
    for (std::size_t t = 0; t < T; ++t) tok[t] = static_cast<std::int32_t>(ids(b, t));
    auto state = m.new_state(T);
    Matrix<float> logits(T, V);
    m.forward(pool, *state, tok, logits.view());
    out.insert(out.end(), logits.data(), logits.data() + T * V);
  }
  return out;
}

std::vector<float> reference(const std::string& family) {
  io::SafetensorsModel ref(fixture(family) + "/reference.safetensors");
  auto want = ref.view<float, DExtents<3>>("logits");
  return std::vector<float>(want.data(), want.data() + want.size());
}

std::pair<double, double> max_err(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double e = 0, s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    e = std::max(e, std::abs(double(a[i]) - double(b[i])));
    s = std::max(s, std::abs(double(b[i])));
  }
  return {e, s};
}

// Fraction of the logit rows (one per position) whose max |a - b| is <= tol * max |b|.
double rows_within(const std::vector<float>& a, const std::vector<float>& b, std::size_t V,
                   double tol) {
  const double s = max_err(a, b).second;
  std::size_t ok = 0, n = a.size() / V;
  for (std::size_t r = 0; r < n; ++r) {
    double e = 0;
    for (std::size_t v = 0; v < V; ++v)
      e = std::max(e, std::abs(double(a[r * V + v]) - double(b[r * V + v])));
    ok += e <= tol * s;
  }
  return double(ok) / double(n);
}

std::vector<std::int32_t> greedy(const models::Model& m, const std::vector<std::int32_t>& prompt,
                                 std::size_t n) {
  ThreadPool pool(2);
  auto state = m.new_state(prompt.size() + n);
  Matrix<float> logits(1, m.vocab_size());
  m.forward(pool, *state, prompt, logits.view());
  std::vector<std::int32_t> got;
  for (std::size_t i = 0; i < n; ++i) {
    std::int32_t best = 0;
    for (std::size_t v = 1; v < m.vocab_size(); ++v)
      if (logits(0, v) > logits(0, static_cast<std::size_t>(best)))
        best = static_cast<std::int32_t>(v);
    got.push_back(best);
    if (i + 1 < n)
      m.forward(pool, *state, std::span<const std::int32_t>(&got.back(), 1), logits.view());
  }
  return got;
}

constexpr const char* kFamilies[] = {
    "qwen2", "llama3", "mixtral", "deepseek_v3", "deepseek_v3_nolora", "deepseek_v3_fp8"};

}  // namespace

TEST_CASE("an F32 GGUF export loads back to the safetensors logits and greedy ids") {
  for (const char* family : kFamilies) {
    SUBCASE(family) {
      const std::string path = export_fixture(family, io::GgmlType::f32);
      auto st = models::load_model(fixture(family));
      auto gg = models::load_model(path);
      CHECK(gg->weight_format() == "float");
      CHECK(gg->config().family == st->config().family);
      const auto [e, s] = max_err(run(*gg, family), run(*st, family));
      INFO(family << ": max |gguf - safetensors| " << e << ", max |logit| " << s);
      const std::string f(family);
      if (f == "llama3" || f == "mixtral")  // llama arch: permuted q/k, interleaved rope
        CHECK(e <= 1e-5 * s);
      else
        CHECK(e == 0.0);
      std::ifstream gf(fixture(family) + "/greedy.json");
      const auto j = nlohmann::json::parse(gf);
      const auto prompt = j["prompt_ids"].get<std::vector<std::int32_t>>();
      const auto want = j["greedy_ids"].get<std::vector<std::int32_t>>();
      CHECK(greedy(*gg, prompt, want.size()) == want);
    }
  }
}

TEST_CASE("a Q8_0 GGUF export stays close to the reference logits") {
  for (const char* family : kFamilies) {
    SUBCASE(family) {
      const std::string path = export_fixture(family, io::GgmlType::q8_0);
      io::GgufFile g(path);
      // Matrices are Q8_0; norms and the router stay F32.
      CHECK(g.tensor("token_embd.weight").type == io::GgmlType::q8_0);
      CHECK(g.tensor("output_norm.weight").type == io::GgmlType::f32);
      if (g.find("llama.expert_count") || g.find("deepseek2.expert_count"))
        CHECK(g.tensor("blk.1.ffn_gate_inp.weight").type == io::GgmlType::f32);
      auto gg = models::load_model(path);
      // Used in place as AnyFormat: Q8_0 matrices, F32 router (and DeepSeek's rebuilt kv_b).
      CHECK(gg->weight_format().starts_with("mixed ("));
      CHECK(gg->weight_format().find("Q8_0 x ") != std::string::npos);
      // The decode GEMV reads the 8-row interleaved copies the loader made of the matrices.
      CHECK(gg->repacked_bytes() > 0);
      const auto got = run(*gg, family), ref = reference(family);
      const auto [e, s] = max_err(got, ref);
      const double within = rows_within(got, ref, gg->vocab_size(), 0.04);
      INFO(family << ": Q8_0 max |err| " << e << ", max |ref| " << s
                  << ", rows within 0.04: " << within);
      // A perturbed hidden state can flip a near-tied expert choice: MoE rows may jump.
      CHECK(within >= (gg->config().is_moe() ? 0.75 : 1.0));
      // decode_weight_bytes counts the stored bytes: Q8_0 is 34 bytes per 32 weights.
      auto f32 = models::load_model(export_fixture(family, io::GgmlType::f32));
      INFO("decode bytes: q8_0 " << gg->decode_weight_bytes() << ", f32 "
                                 << f32->decode_weight_bytes());
      CHECK(gg->decode_weight_bytes() < f32->decode_weight_bytes() / 2);
    }
  }
}

TEST_CASE("a GGUF with mixed matrix formats runs as AnyFormat in both MLA forms") {
  for (const char* family : {"qwen2", "deepseek_v3"}) {
    SUBCASE(family) {
      const auto cfg = io::load_model_config(fixture(family));
      models::SafetensorsSource src(fixture(family));
      models::GgufExportOptions opt;
      opt.type = io::GgmlType::q8_0;
      // A Q4_K_M-like mix: attention Q4_0 / Q6_K, MLP BF16 / F16, the rest Q8_0.
      opt.type_for = [](const std::string& n, const std::vector<std::uint64_t>& ne,
                        io::GgmlType t) {
        if (t == io::GgmlType::f32) return t;
        if (n.find("attn_q") != std::string::npos || n.find("attn_k_b") != std::string::npos)
          return io::GgmlType::q4_0;
        if (n.find("attn_output") != std::string::npos && ne[0] % 256 == 0)
          return io::GgmlType::q6_k;
        if (n.find("ffn_up") != std::string::npos) return io::GgmlType::bf16;
        if (n.find("ffn_gate.") != std::string::npos) return io::GgmlType::f16;
        return t;
      };
      const std::string path = tmp().file(std::string(family) + "_mixed.gguf");
      const auto rep = models::export_gguf(cfg, src, nullptr, opt, path);
      CHECK(rep.type_counts.count("Q4_0") == 1);
      CHECK(rep.type_counts.count("BF16") == 1);
      for (MlaForm form : {MlaForm::absorbed, MlaForm::naive}) {
        models::LoadOptions lo;
        lo.mla_form = form;
        auto gg = models::load_model(path, lo);
        const std::string wf = gg->weight_format();
        INFO(wf);
        CHECK(wf.find("Q4_0 x ") != std::string::npos);
        CHECK(wf.find("BF16 x ") != std::string::npos);
        const auto got = run(*gg, family), ref = reference(family);
        const auto [e, s] = max_err(got, ref);
        const double within = rows_within(got, ref, gg->vocab_size(), 0.1);
        INFO(family << ": mixed max |err| " << e << ", max |ref| " << s
                    << ", rows within 0.1: " << within);
        CHECK(within >= (gg->config().is_moe() ? 0.75 : 1.0));
        if (std::string(family) == "qwen2") break;
      }
    }
  }
}

TEST_CASE("GGUF export writes llama.cpp's names, keys and layouts") {
  SUBCASE("deepseek2: split kv_b, stacked experts, MLA keys") {
    const std::string path = export_fixture("deepseek_v3", io::GgmlType::f32);
    io::GgufFile g(path);
    CHECK(g.get_string("general.architecture") == "deepseek2");
    CHECK(g.get_uint("deepseek2.attention.head_count_kv") == 1);
    CHECK(g.get_uint("deepseek2.attention.key_length") == 128 + 32);
    CHECK(g.get_uint("deepseek2.attention.value_length") == 128);
    CHECK(g.get_uint("deepseek2.attention.key_length_mla") == 96);
    CHECK(g.get_uint("deepseek2.attention.value_length_mla") == 64);
    CHECK(g.get_uint("deepseek2.expert_gating_func") == 2);
    CHECK(g.get_uint("deepseek2.leading_dense_block_count") == 1);
    CHECK(g.get_string("deepseek2.rope.scaling.type") == "yarn");
    CHECK(g.tensor("blk.0.attn_k_b.weight").ne == std::vector<std::uint64_t>{64, 128, 3});
    CHECK(g.tensor("blk.0.attn_v_b.weight").ne == std::vector<std::uint64_t>{128, 64, 3});
    CHECK(g.tensor("blk.1.ffn_up_exps.weight").ne == std::vector<std::uint64_t>{128, 64, 8});
    CHECK(g.tensor("blk.1.exp_probs_b.bias").ne == std::vector<std::uint64_t>{8});
    CHECK(g.get_string("tokenizer.ggml.model") == "none");
    for (const auto& t : g.tensors()) CHECK(!t.name.starts_with("blk.2."));  // MTP layer dropped
    // W_UK transposed: k_b[h][r][n] == kv_b[h * (64 + 64) + n][r].
    models::SafetensorsSource src(fixture("deepseek_v3"));
    const auto* kv = src.find("model.layers.0.self_attn.kv_b_proj.weight");
    REQUIRE(kv != nullptr);
    const auto& kb = g.tensor("blk.0.attn_k_b.weight");
    const float* kvf = reinterpret_cast<const float*>(kv->data);
    const float* kbf = reinterpret_cast<const float*>(kb.data);
    for (std::size_t h : {0u, 2u})
      for (std::size_t r : {0u, 77u})
        for (std::size_t n : {0u, 5u, 63u})
          CHECK(kbf[(h * 128 + r) * 64 + n] == kvf[(h * 128 + n) * 128 + r]);
  }
  SUBCASE("llama: permuted q/k rows, rope_freqs, tied output") {
    const std::string path = export_fixture("llama3", io::GgmlType::f32);
    io::GgufFile g(path);
    CHECK(g.get_string("general.architecture") == "llama");
    CHECK(g.get_uint("llama.rope.dimension_count") == 64);
    CHECK(g.get_uint("llama.attention.key_length") == 64);
    CHECK(g.tensor("rope_freqs.weight").ne == std::vector<std::uint64_t>{32});
    CHECK(g.find("llama.expert_count") == nullptr);
    bool has_output = false;
    for (const auto& t : g.tensors()) has_output |= t.name == "output.weight";
    CHECK(!has_output);
    models::SafetensorsSource src(fixture("llama3"));
    const float* q =
        reinterpret_cast<const float*>(src.find("model.layers.1.self_attn.q_proj.weight")->data);
    const float* gq = reinterpret_cast<const float*>(g.tensor("blk.1.attn_q.weight").data);
    // head 2, pair i = 7: rows 2*64 + 2*7 + j <- 2*64 + j*32 + 7
    for (std::size_t j : {0u, 1u})
      for (std::size_t col : {0u, 100u})
        CHECK(gq[(128 + 14 + j) * 128 + col] == q[(128 + j * 32 + 7) * 128 + col]);
  }
  SUBCASE("mixtral is llama with experts; qwen2 keeps biases") {
    io::GgufFile m(export_fixture("mixtral", io::GgmlType::f16));
    CHECK(m.get_string("general.architecture") == "llama");
    CHECK(m.get_uint("llama.expert_count") == 8);
    CHECK(m.get_uint("llama.expert_used_count") == 2);
    CHECK(m.tensor("blk.0.ffn_down_exps.weight").ne == std::vector<std::uint64_t>{64, 128, 8});
    CHECK(m.tensor("blk.0.ffn_down_exps.weight").type == io::GgmlType::f16);
    io::GgufFile q(export_fixture("qwen2", io::GgmlType::bf16));
    CHECK(q.get_string("general.architecture") == "qwen2");
    CHECK(q.tensor("blk.0.attn_q.bias").type == io::GgmlType::f32);
    CHECK(q.tensor("blk.0.attn_q.weight").type == io::GgmlType::bf16);
  }
  SUBCASE("k-quants fall back where rows are shorter than 256") {
    io::GgufFile g(export_fixture("qwen2", io::GgmlType::q4_k));
    CHECK(g.tensor("blk.0.ffn_down.weight").type == io::GgmlType::q4_k);  // rows of 256
    CHECK(g.tensor("blk.0.ffn_up.weight").type == io::GgmlType::q4_0);    // rows of 128
  }
}

TEST_CASE("GGUF export writes the tokenizer llama.cpp needs, padded to the embedding rows") {
  // A tiny byte-level BPE: 256 byte tokens, one merge, one special token at id 300.
  io::TokenizerSpec spec;
  spec.source = "test tokenizer";
  io::ByteLevelMap bl;
  for (int b = 0; b < 256; ++b)
    spec.vocab.emplace_back(bl.encode(std::string(1, static_cast<char>(b))), b);
  spec.vocab.emplace_back(bl.encode("ab"), 256);
  spec.merges.emplace_back(bl.encode("a"), bl.encode("b"));
  spec.added.push_back({300, "<|end|>", true});
  spec.splits.push_back({std::string(io::patterns::kQwen2), false});
  const auto cfg = io::load_model_config(fixture("qwen2"));
  models::SafetensorsSource src(fixture("qwen2"));
  const std::string path = tmp().file("tok.gguf");
  models::export_gguf(cfg, src, &spec, {}, path);
  io::GgufFile g(path);
  CHECK(g.get_string("tokenizer.ggml.model") == "gpt2");
  CHECK(g.get_string("tokenizer.ggml.pre") == "qwen2");
  const auto& toks = g.get_array("tokenizer.ggml.tokens", io::GgufType::string);
  const auto& types = g.get_array("tokenizer.ggml.token_type", io::GgufType::i32);
  REQUIRE(toks.size() == 512);  // = embedding rows
  CHECK(toks[257].s == "[PAD257]");
  CHECK(types[257].i == 5);
  CHECK(toks[300].s == "<|end|>");
  CHECK(types[300].i == 3);
  CHECK(types[65].i == 1);
  // tmoe's own GGUF tokenizer reads it back.
  const auto t = io::gguf_tokenizer(g);
  CHECK(t.tokenizer.encode("ab<|end|>") == std::vector<io::TokenId>{256, 300});
  // More token ids than embedding rows is an error.
  spec.added.push_back({600, "<|x|>", true});
  CHECK_THROWS_WITH_AS(models::export_gguf(cfg, src, &spec, {}, path),
                       doctest::Contains("outside the 512 embedding rows"), Error);
}

TEST_CASE("damaged GGUF models fail with one clear error") {
  const std::string good = export_fixture("qwen2", io::GgmlType::f32);
  std::ifstream in(good, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  auto write = [&](const std::string& name, const std::vector<char>& b) {
    const std::string p = tmp().file(name);
    std::ofstream(p, std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size()));
    return p;
  };
  SUBCASE("truncated") {
    const auto p = write("trunc.gguf", std::vector<char>(bytes.begin(), bytes.end() - 1000));
    CHECK_THROWS_WITH_AS(models::load_model(p), doctest::Contains("exceeds the data area"), Error);
  }
  // Rewrites the file through the reader/writer with one change.
  auto rewrite = [&](const std::string& name, auto change) {
    io::GgufFile g(good);
    io::GgufWriter w;
    for (const auto& [k, v] : g.contents().kv) w.set(k, v);
    std::vector<io::GgufTensor> ts = g.tensors();
    change(w, ts);
    for (const auto& t : ts) w.add_tensor(t.name, t.type, t.ne, t.bytes());
    const std::string p = tmp().file(name);
    w.write(p);
    return p;
  };
  SUBCASE("missing tensor") {
    const auto p = rewrite("missing.gguf", [](io::GgufWriter&, std::vector<io::GgufTensor>& ts) {
      std::erase_if(ts, [](const auto& t) { return t.name == "blk.1.attn_k.weight"; });
    });
    CHECK_THROWS_WITH_AS(models::load_model(p),
                         doctest::Contains("'model.layers.1.self_attn.k_proj.weight' is missing"),
                         Error);
  }
  SUBCASE("wrong shape") {
    const auto p = rewrite("shape.gguf", [](io::GgufWriter&, std::vector<io::GgufTensor>& ts) {
      for (auto& t : ts)
        if (t.name == "blk.0.ffn_up.weight") t.ne = {256, 128};  // same bytes, swapped dims
    });
    CHECK_THROWS_WITH_AS(models::load_model(p),
                         doctest::Contains("'model.layers.0.mlp.up_proj.weight': expected shape"),
                         Error);
  }
  SUBCASE("unknown architecture") {
    const auto p = rewrite("arch.gguf", [](io::GgufWriter& w, std::vector<io::GgufTensor>&) {
      w.set("general.architecture", io::GgufValue::of_string("mamba"));
    });
    CHECK_THROWS_WITH_AS(models::load_model(p),
                         doctest::Contains("general.architecture 'mamba' is not supported"), Error);
  }
}

TEST_CASE("quantizing a safetensors checkpoint at load equals running its Q8_0 GGUF export") {
  for (const char* family : {"qwen2", "deepseek_v3_fp8"}) {
    SUBCASE(family) {
      models::LoadOptions opt;
      opt.quantize = quant::QuantType::q8_0;
      auto q = models::load_model(fixture(family), opt);
      CHECK(q->weight_format().find("Q8_0 x ") != std::string::npos);
      const auto got = run(*q, family), ref = reference(family);
      const double within = rows_within(got, ref, q->vocab_size(), 0.04);
      INFO(family << ": rows within 0.04: " << within);
      CHECK(within >= (q->config().is_moe() ? 0.75 : 1.0));
      if (std::string(family) == "qwen2") {
        // Same quantizer on the same floats, same kernels: bit-identical to the GGUF path.
        auto g = models::load_model(export_fixture(family, io::GgmlType::q8_0));
        CHECK(max_err(got, run(*g, family)).first == 0.0);
      }
    }
  }
}

TEST_CASE("a GGUF file re-exported from GgufSource is the same model") {
  for (const char* family : {"llama3", "mixtral", "deepseek_v3"}) {
    SUBCASE(family) {
      const std::string first = export_fixture(family, io::GgmlType::f32);
      auto src = std::make_shared<models::GgufSource>(first);
      const std::string second = tmp().file(std::string(family) + "_again.gguf");
      models::export_gguf(src->config(), *src, nullptr, {io::GgmlType::f32, "", {}, {}}, second);
      // Same tensors, same bytes (q/k stay permuted, rope_freqs and kv_b halves carried over).
      io::GgufFile a(first), b(second);
      REQUIRE(a.tensors().size() == b.tensors().size());
      for (const auto& t : a.tensors()) {
        const auto& u = b.tensor(t.name);
        CHECK(u.ne == t.ne);
        REQUIRE(u.nbytes == t.nbytes);
        CHECK(std::memcmp(u.data, t.data, t.nbytes) == 0);
      }
    }
  }
}
