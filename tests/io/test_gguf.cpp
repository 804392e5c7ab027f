// Tests for tmoe/io/gguf.hpp: writer/reader round trip of every metadata type and the supported
// tensor types, the reversed dimension order, llama.cpp tensor names, the tokenizer from GGUF
// metadata (compared with the same tokenizer from tokenizer.json), and damaged files.
#include <doctest/doctest.h>

#include <numeric>

#include "io_test_util.hpp"
#include "tmoe/io/gguf.hpp"

using namespace tmoe;
using io::GgmlType;
using io::GgufType;
using io::GgufValue;
using tmoe::test::check_error;

namespace {

std::vector<std::byte> filler(std::size_t n, int seed) {
  std::vector<std::byte> b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
  return b;
}

io::GgufWriter sample() {
  io::GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  w.set("llama.block_count", GgufValue::of_u32(2));
  w.set("llama.rope.freq_base", GgufValue::of_f32(500000.f));
  w.set("neg", GgufValue::of_i32(-7));
  w.set("big", GgufValue::of_u64(1ull << 40));
  w.set("flag", GgufValue::of_bool(true));
  GgufValue i8;
  i8.type = GgufType::i8;
  i8.i = -3;
  w.set("i8", i8);
  GgufValue f64;
  f64.type = GgufType::f64;
  f64.f = 0.125;
  w.set("f64", f64);
  w.set_string_array("names", {"a", "", "ccc"});
  w.set("nested",
        GgufValue::of_array(
            GgufType::array,
            {GgufValue::of_array(GgufType::u32, {GgufValue::of_u32(1), GgufValue::of_u32(2)})}));
  w.add_tensor("token_embd.weight", GgmlType::f32, {4, 3}, filler(4 * 3 * 4, 1));  // torch [3,4]
  w.add_tensor("blk.0.attn_q.weight", GgmlType::q8_0, {64, 2}, filler(2 * 2 * 34, 2));
  w.add_tensor("blk.0.ffn_up.weight", GgmlType::q4_k, {256, 1}, filler(144, 3));
  w.add_tensor("blk.0.ffn_down.weight", GgmlType::q6_k, {512, 3}, filler(2 * 3 * 210, 4));
  w.add_tensor("blk.0.attn_k.weight", GgmlType::q4_0, {32, 1, 1, 2}, filler(2 * 18, 5));
  w.add_tensor("output_norm.weight", GgmlType::bf16, {6}, filler(12, 6));
  w.add_tensor("output.weight", GgmlType::f16, {2, 5}, filler(20, 7));
  return w;
}

}  // namespace

TEST_CASE("gguf: round trip of metadata and tensors") {
  test::TempDir dir;
  const auto path = dir.file("m.gguf");
  sample().write(path);
  io::GgufFile g(path);
  CHECK(g.contents().version == 3);
  CHECK(g.get_string("general.architecture") == "llama");
  CHECK(g.get_uint("llama.block_count") == 2);
  CHECK(g.get_float("llama.rope.freq_base") == 500000.0);
  CHECK(g.at("neg").i == -7);
  CHECK(g.get_uint("big") == (1ull << 40));
  CHECK(g.at("flag").b);
  CHECK(g.at("i8").i == -3);
  CHECK(g.get_float("f64") == 0.125);
  const auto& names = g.get_array("names", GgufType::string);
  REQUIRE(names.size() == 3);
  CHECK(names[2].s == "ccc");
  CHECK(g.at("nested").arr.at(0).arr.at(1).u == 2);
  const auto& e = g.tensor("token_embd.weight");
  CHECK(e.ne == std::vector<std::uint64_t>{4, 3});
  CHECK(e.shape() == std::vector<std::size_t>{3, 4});  // PyTorch order
  CHECK(e.nbytes == 48);
  CHECK(std::memcmp(e.data, filler(48, 1).data(), 48) == 0);
  const auto& q = g.tensor("blk.0.ffn_down.weight");
  CHECK(q.type == GgmlType::q6_k);
  CHECK(q.nbytes == 2 * 3 * 210);
  CHECK(std::memcmp(q.data, filler(q.nbytes, 4).data(), q.nbytes) == 0);
  for (const auto& t : g.tensors()) CHECK(t.offset % 32 == 0);
  check_error([&] { (void)g.get_string("llama.block_count"); },
              {path, "'llama.block_count'", "expected a string"});
  check_error([&] { (void)g.get_uint("neg"); }, {path, "'neg'", "non-negative"});
  check_error([&] { (void)g.at("nope"); }, {path, "'nope'", "missing"});
  check_error([&] { (void)g.tensor("nope"); }, {path, "'nope'", "not found"});

  io::GgufWriter w64(64);
  w64.add_tensor("a", GgmlType::f32, {3}, filler(12, 0));
  w64.add_tensor("b", GgmlType::f32, {5}, filler(20, 1));
  const auto bytes = w64.serialize();
  const auto c = io::parse_gguf(bytes, "w64");
  CHECK(c.alignment == 64);
  CHECK(c.tensors[1].offset == 64);
  CHECK(c.data_start % 64 == 0);
}

TEST_CASE("gguf: llama.cpp tensor names") {
  auto n = [](std::string_view hf) { return io::gguf_tensor_name(hf).value().name; };
  CHECK(n("model.embed_tokens.weight") == "token_embd.weight");
  CHECK(n("model.norm.weight") == "output_norm.weight");
  CHECK(n("lm_head.weight") == "output.weight");
  CHECK(n("model.layers.0.self_attn.q_proj.weight") == "blk.0.attn_q.weight");
  CHECK(n("model.layers.12.self_attn.k_proj.bias") == "blk.12.attn_k.bias");
  CHECK(n("model.layers.3.post_attention_layernorm.weight") == "blk.3.ffn_norm.weight");
  CHECK(n("model.layers.3.self_attn.kv_a_proj_with_mqa.weight") == "blk.3.attn_kv_a_mqa.weight");
  CHECK(n("model.layers.3.self_attn.q_a_layernorm.weight") == "blk.3.attn_q_a_norm.weight");
  CHECK(n("model.layers.3.mlp.gate.weight") == "blk.3.ffn_gate_inp.weight");
  CHECK(n("model.layers.3.mlp.gate.e_score_correction_bias") == "blk.3.exp_probs_b.bias");
  CHECK(n("model.layers.3.mlp.shared_experts.down_proj.weight") == "blk.3.ffn_down_shexp.weight");
  const auto ex = io::gguf_tensor_name("model.layers.7.mlp.experts.255.up_proj.weight").value();
  CHECK(ex.name == "blk.7.ffn_up_exps.weight");
  CHECK(ex.expert == 255u);
  CHECK(io::gguf_tensor_name("model.layers.1.block_sparse_moe.experts.3.w2.weight").value().name ==
        "blk.1.ffn_down_exps.weight");
  CHECK_FALSE(io::gguf_tensor_name("model.layers.x.mlp.up_proj.weight").has_value());
  CHECK_FALSE(io::gguf_tensor_name("vision.tower.weight").has_value());
}

TEST_CASE("gguf: tokenizer from metadata matches tokenizer.json") {
  const std::string dir = std::string(TMOE_TEST_DATA_DIR) + "/tokenizers/";
  for (const std::string name : {"qwen3", "deepseek_v3"}) {
    CAPTURE(name);
    const auto j = nlohmann::json::parse(io::read_text_file(dir + name + "/tokenizer.json"));
    if (name == "deepseek_v3") {  // the built-in patterns are the file's
      const auto& p = j["pre_tokenizer"]["pretokenizers"];
      CHECK(p[0]["pattern"]["Regex"] == io::patterns::kDeepSeekV3Digits);
      CHECK(p[1]["pattern"]["Regex"] == io::patterns::kDeepSeekV3Cjk);
      CHECK(p[2]["pattern"]["Regex"] == io::patterns::kDeepSeekV3Words);
    } else {
      CHECK(j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == io::patterns::kQwen2);
    }
    std::size_t n = 0;
    for (auto& [k, v] : j["model"]["vocab"].items())
      n = std::max<std::size_t>(n, v.get<std::size_t>() + 1);
    for (const auto& a : j["added_tokens"])
      n = std::max<std::size_t>(n, a["id"].get<std::size_t>() + 1);
    std::vector<std::string> tokens(n);
    std::vector<GgufValue> types(n, GgufValue::of_i32(5));  // unused slots
    for (auto& [k, v] : j["model"]["vocab"].items()) {
      tokens[v.get<std::size_t>()] = k;
      types[v.get<std::size_t>()] = GgufValue::of_i32(1);
    }
    for (const auto& a : j["added_tokens"]) {
      tokens[a["id"].get<std::size_t>()] = a["content"].get<std::string>();
      types[a["id"].get<std::size_t>()] = GgufValue::of_i32(a["special"].get<bool>() ? 3 : 4);
    }
    for (std::size_t i = 0; i < n; ++i)
      if (tokens[i].empty()) tokens[i] = "[PAD" + std::to_string(i) + "]";
    std::vector<std::string> merges;
    for (const auto& m : j["model"]["merges"])
      merges.push_back(m.is_string() ? m.get<std::string>()
                                     : m[0].get<std::string>() + " " + m[1].get<std::string>());
    io::GgufWriter w;
    w.set("tokenizer.ggml.model", GgufValue::of_string("gpt2"));
    w.set("tokenizer.ggml.pre", GgufValue::of_string(name == "qwen3" ? "qwen2" : "deepseek-v3"));
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_string_array("tokenizer.ggml.merges", merges);
    w.set("tokenizer.ggml.token_type", GgufValue::of_array(GgufType::i32, types));
    w.set("tokenizer.ggml.bos_token_id", GgufValue::of_u32(0));
    w.set("tokenizer.ggml.eos_token_id", GgufValue::of_u32(1));
    test::TempDir tmp;
    w.write(tmp.file("tok.gguf"));
    io::GgufFile g(tmp.file("tok.gguf"));
    const auto gt = io::gguf_tokenizer(g);
    CHECK(gt.bos == 0);
    CHECK(gt.eos == 1);
    const auto jt =
        io::Tokenizer::from_json(io::read_text_file(dir + name + "/tokenizer.json"), name);
    for (const std::string text :
         {"Hello world, 12345 times!", "中文分词测试，你好世界。", "<｜User｜>Hi\n\n  x",
          "<|im_start|>user\nok<|im_end|>", "naïve Ωμέγα 😀"}) {
      CAPTURE(text);
      CHECK(gt.tokenizer.encode(text) == jt.encode(text));
    }
  }
}

TEST_CASE("gguf: damaged files each give one clear error") {
  const auto full = sample().serialize();
  io::parse_gguf(full, "ok.gguf");
  SUBCASE("truncated anywhere") {
    for (std::size_t cut = 0; cut < full.size(); ++cut) {
      CAPTURE(cut);
      std::vector<std::byte> part(full.begin(), full.begin() + cut);
      check_error([&] { io::parse_gguf(part, "cut.gguf"); }, {"cut.gguf"});
    }
  }
  auto patched = [&](std::size_t at, const void* v, std::size_t n) {
    auto b = full;
    std::memcpy(b.data() + at, v, n);
    return b;
  };
  auto expect = [](const std::vector<std::byte>& b, std::initializer_list<std::string_view> parts) {
    check_error([&] { io::parse_gguf(b, "bad.gguf"); }, parts);
  };
  const std::uint32_t v9 = 9;
  const std::uint64_t huge = ~0ull;
  expect(patched(0, "GGUX", 4), {"bad.gguf", "bad magic"});
  expect(patched(4, &v9, 4), {"bad.gguf", "version 9"});
  expect(patched(8, &huge, 8), {"bad.gguf", "tensor count"});
  expect(patched(16, &huge, 8), {"bad.gguf", "metadata count"});
  expect(patched(24, &huge, 8), {"bad.gguf", "string length"});  // first key length
  // first value type (after key "general.architecture", 20 bytes)
  const std::uint32_t t99 = 99;
  expect(patched(24 + 8 + 20, &t99, 4),
         {"bad.gguf", "'general.architecture'", "unknown value type 99"});

  auto build = [](auto&& fill) {
    io::GgufWriter w;
    fill(w);
    return w.serialize();
  };
  // find the tensor info fields by re-serializing a one-tensor file
  auto one = build([](io::GgufWriter& w) { w.add_tensor("t", GgmlType::f32, {4}, filler(16, 0)); });
  // layout: 24 header, name (8+1), n_dims 4, ne 8, type 4, offset 8
  const std::size_t ty_at = 24 + 9 + 4 + 8, off_at = ty_at + 4;
  auto with = [&](std::size_t at, auto v) {
    auto b = one;
    std::memcpy(b.data() + at, &v, sizeof v);
    return b;
  };
  expect(with(ty_at, std::uint32_t{3}), {"bad.gguf", "'t'", "ggml type 3 is not supported"});
  expect(with(ty_at, std::uint32_t{8}),
         {"bad.gguf", "'t'", "not a multiple of the Q8_0 block size"});
  expect(with(off_at, std::uint64_t{64}), {"bad.gguf", "'t'", "exceeds the data area"});
  expect(with(off_at, std::uint64_t{3}), {"bad.gguf", "'t'", "alignment"});
  expect(with(24 + 9, std::uint32_t{7}), {"bad.gguf", "'t'", "n_dims 7"});
  expect(with(24 + 9 + 4, std::uint64_t{1} << 62), {"bad.gguf", "'t'"});
  auto two = build([](io::GgufWriter& w) {
    w.add_tensor("a", GgmlType::f32, {16}, filler(64, 0));
    w.add_tensor("b", GgmlType::f32, {8}, filler(32, 0));
  });
  {  // b's offset (64) -> 32: overlaps a
    auto b = two;
    const std::size_t b_off = 24 + (9 + 4 + 8 + 4 + 8) + (9 + 4 + 8 + 4);
    const std::uint64_t o = 32;
    std::memcpy(b.data() + b_off, &o, 8);
    expect(b, {"bad.gguf", "'a'", "'b'", "overlap"});
  }
  expect(build([](io::GgufWriter& w) { w.set("general.alignment", GgufValue::of_u32(3)); }),
         {"bad.gguf", "general.alignment"});
  {
    auto dup = build([](io::GgufWriter& w) {
      w.set("k1", GgufValue::of_u32(1));
      w.set("k2", GgufValue::of_u32(2));
    });
    dup[24 + 18 + 8 + 1] = std::byte{'1'};  // rename k2 -> k1 (k1 entry: 8 + 2 + 4 + 4 bytes)
    expect(dup, {"bad.gguf", "duplicate metadata key 'k1'"});
  }
}
