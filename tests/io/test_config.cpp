// Tests for tmoe/io/config.hpp: the real DeepSeek-R1, R1-Distill (Qwen2, Llama), Mixtral and
// DeepSeek-V2-Lite configs, transformers 5 rope_parameters, the seed variant fields, and one
// error naming the field for each kind of invalid config.
#include <doctest/doctest.h>

#include "io_test_util.hpp"
#include "tmoe/io/config.hpp"

using namespace tmoe;
using io::parse_model_config;
using json = nlohmann::json;
using tmoe::test::check_error;

namespace {

json r1_config() {
  return json::parse(R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
  "num_hidden_layers": 61, "num_nextn_predict_layers": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
  "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
  "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
  "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "moe_layer_freq": 1,
  "first_k_dense_replace": 3, "norm_topk_prob": true, "scoring_func": "sigmoid", "hidden_act": "silu",
  "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 1,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}})");
}

json qwen_1_5b() {
  return json::parse(
      R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
  "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 10000, "rope_scaling": null, "max_position_embeddings": 131072,
  "vocab_size": 151936, "tie_word_embeddings": false, "bos_token_id": 151643, "eos_token_id": 151643,
  "use_sliding_window": false, "sliding_window": 4096, "max_window_layers": 21})");
}

json llama_8b() {
  return json::parse(
      R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072, "vocab_size": 128256,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "attention_bias": false, "mlp_bias": false, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]})");
}

}  // namespace

TEST_CASE("config: DeepSeek-R1") {
  const auto c = parse_model_config(r1_config(), "r1/config.json");
  CHECK(c.family == io::Family::deepseek_v3);
  CHECK(c.hidden_size == 7168);
  CHECK(c.is_mla());
  CHECK(c.qk_head_dim() == 192);
  CHECK(c.q_lora_rank == 1536);
  CHECK(c.kv_lora_rank == 512);
  CHECK(c.is_moe());
  CHECK_FALSE(c.is_moe_layer(2));
  CHECK(c.is_moe_layer(3));
  CHECK(c.is_moe_layer(60));
  CHECK(c.topk_method == io::TopkMethod::noaux_tc);
  CHECK(c.scoring_func == io::ScoringFunc::sigmoid);
  CHECK(c.norm_topk_prob);
  CHECK(c.routed_scaling_factor == 2.5);
  CHECK(c.n_group == 8);
  CHECK(c.topk_group == 4);
  CHECK(c.rope.type == io::RopeType::yarn);
  CHECK(c.rope.factor == 40.0);
  CHECK(c.rope.original_max_position_embeddings == 4096);
  CHECK(c.rope.beta_fast == 32.0);
  CHECK(c.rope.beta_slow == 1.0);
  CHECK(c.rope.mscale == 1.0);
  CHECK(c.rope.mscale_all_dim == 1.0);
  CHECK(c.rope.interleave);
  CHECK(c.fp8);
  CHECK(c.fp8_block_rows == 128);
  CHECK(c.bos_token_id == 0);
  REQUIRE(c.eos_token_ids.size() == 1);
  CHECK(c.eos_token_ids[0] == 1);
  CHECK(c.num_nextn_predict_layers == 1);
  CHECK(c.norm_of_layer(0) == io::NormType::rmsnorm);
}

TEST_CASE("config: DeepSeek-V2-Lite (q_lora_rank null, softmax greedy)") {
  auto j = r1_config();
  j["model_type"] = "deepseek_v2";
  j["q_lora_rank"] = nullptr;
  j["n_routed_experts"] = 64;
  j["num_experts_per_tok"] = 6;
  j["n_group"] = 1;
  j["topk_group"] = 1;
  j["topk_method"] = "greedy";
  j["scoring_func"] = "softmax";
  j["first_k_dense_replace"] = 1;
  j.erase("quantization_config");
  const auto c = parse_model_config(j);
  CHECK(c.family == io::Family::deepseek_v2);
  CHECK(c.q_lora_rank == 0);
  CHECK(c.topk_method == io::TopkMethod::greedy);
  CHECK(c.scoring_func == io::ScoringFunc::softmax);
  CHECK_FALSE(c.fp8);
}

TEST_CASE("config: R1-Distill Qwen2 and Llama") {
  const auto q = parse_model_config(qwen_1_5b());
  CHECK(q.family == io::Family::qwen2);
  CHECK(q.head_dim == 128);
  CHECK(q.num_key_value_heads == 2);
  CHECK(q.attention_bias);
  CHECK_FALSE(q.is_moe());
  CHECK(q.rope.type == io::RopeType::default_);
  CHECK(q.rope.theta == 10000.0);
  CHECK_FALSE(q.rope.interleave);

  const auto l = parse_model_config(llama_8b());
  CHECK(l.family == io::Family::llama);
  CHECK_FALSE(l.attention_bias);
  CHECK(l.rope.type == io::RopeType::llama3);
  CHECK(l.rope.factor == 8.0);
  CHECK(l.rope.high_freq_factor == 4.0);
  CHECK(l.rope.original_max_position_embeddings == 8192);
  CHECK(l.rope.theta == 500000.0);
  CHECK(l.eos_token_ids == std::vector<std::int64_t>{128001, 128008, 128009});
}

TEST_CASE("config: transformers 5 rope_parameters") {
  auto j = llama_8b();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] =
      json::parse(R"({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  auto c = parse_model_config(j);
  CHECK(c.rope.type == io::RopeType::llama3);
  CHECK(c.rope.theta == 500000.0);
  auto q = qwen_1_5b();
  q["rope_parameters"] = json::parse(R"({"rope_type": "default", "rope_theta": 1000000.0})");
  CHECK(parse_model_config(q).rope.theta == 1000000.0);
}

TEST_CASE("config: Mixtral and the tmoe seed variant") {
  auto j = json::parse(
      R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 512,
      "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
      "num_local_experts": 16, "num_experts_per_tok": 2, "vocab_size": 1000, "rms_norm_eps": 1e-5,
      "rope_theta": 1000000.0, "tmoe_norm_hybrid_split": 2, "tmoe_norm_shallow": "layernorm"})");
  const auto c = parse_model_config(j);
  CHECK(c.family == io::Family::mixtral);
  CHECK(c.n_routed_experts == 16);
  CHECK(c.num_experts_per_tok == 2);
  CHECK(c.moe_intermediate_size == 1024);
  CHECK(c.is_moe_layer(0));
  CHECK(c.head_dim == 64);
  CHECK(c.norm_hybrid_split == 2);
  CHECK(c.norm_of_layer(0) == io::NormType::layernorm);
  CHECK(c.norm_of_layer(1) == io::NormType::layernorm);
  CHECK(c.norm_of_layer(2) == io::NormType::rmsnorm);
  CHECK(c.norm_of_layer(5) == io::NormType::rmsnorm);
}

TEST_CASE("config: invalid configs name the field") {
  auto expect = [](json j, std::initializer_list<std::string_view> parts) {
    check_error([&] { (void)parse_model_config(j, "m/config.json"); }, parts);
  };
  {
    auto j = qwen_1_5b();
    j["num_attention_heads"] = 7;
    expect(j, {"m/config.json", "num_attention_heads", "does not divide hidden_size"});
  }
  {
    auto j = qwen_1_5b();
    j["num_key_value_heads"] = 5;
    expect(j, {"num_key_value_heads", "does not divide"});
  }
  {
    auto j = qwen_1_5b();
    j["hidden_size"] = -4;
    expect(j, {"hidden_size", "non-negative"});
  }
  {
    auto j = qwen_1_5b();
    j.erase("vocab_size");
    expect(j, {"vocab_size", "missing"});
  }
  {
    auto j = qwen_1_5b();
    j["vocab_size"] = "big";
    expect(j, {"vocab_size", "expected an integer"});
  }
  {
    auto j = qwen_1_5b();
    j["num_hidden_layers"] = 0;
    expect(j, {"num_hidden_layers", "must be > 0"});
  }
  {
    auto j = qwen_1_5b();
    j["model_type"] = "gpt2";
    expect(j, {"model_type", "unknown model_type 'gpt2'"});
  }
  {
    auto j = qwen_1_5b();
    j.erase("model_type");
    j["architectures"] = {"GPT2LMHeadModel"};
    expect(j, {"model_type"});
  }
  {
    auto j = qwen_1_5b();
    j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
    expect(j, {"rope_scaling.type", "unsupported rope type 'dynamic'"});
  }
  {
    auto j = qwen_1_5b();
    j["rope_parameters"] = {{"rope_type", "longrope"}};
    expect(j, {"rope_parameters", "unsupported rope type 'longrope'"});
  }
  {
    auto j = llama_8b();
    j["rope_scaling"].erase("original_max_position_embeddings");
    expect(j, {"rope_scaling.original_max_position_embeddings", "missing"});
  }
  {
    auto j = llama_8b();
    j["eos_token_id"] = json::array({1, -2});
    expect(j, {"eos_token_id", "-2"});
  }
  {
    auto j = r1_config();  // absent (not null: null means a direct q_proj, as in HF)
    j.erase("q_lora_rank");
    expect(j, {"q_lora_rank", "missing"});
  }
  {
    auto j = r1_config();
    j["n_group"] = 7;
    expect(j, {"n_group", "does not divide n_routed_experts"});
  }
  {
    auto j = r1_config();
    j["topk_group"] = 9;
    expect(j, {"topk_group"});
  }
  {
    auto j = r1_config();
    j["num_experts_per_tok"] = 300;
    expect(j, {"num_experts_per_tok"});
  }
  {
    auto j = r1_config();
    j["scoring_func"] = "relu";
    expect(j, {"scoring_func", "relu"});
  }
  {
    auto j = r1_config();
    j["rope_scaling"]["factor"] = -1;
    expect(j, {"rope_scaling.factor"});
  }
  {
    auto j = r1_config();
    j["quantization_config"]["weight_block_size"] = {128};
    expect(j, {"weight_block_size"});
  }
  {
    auto j = qwen_1_5b();
    j["tmoe_norm_hybrid_split"] = 99;
    expect(j, {"tmoe_norm_hybrid_split", "exceeds"});
  }
  {
    auto j = qwen_1_5b();
    j["tmoe_norm_hybrid_split"] = 1;
    j["tmoe_norm_shallow"] = "batchnorm";
    expect(j, {"tmoe_norm_shallow", "batchnorm"});
  }
  expect(json::array(), {"expected a JSON object"});
}

TEST_CASE("config: load from a folder; malformed JSON") {
  test::TempDir dir;
  test::write_text(dir.file("config.json"), qwen_1_5b().dump());
  CHECK(io::load_model_config(dir.path().string()).hidden_size == 1536);
  test::write_text(dir.file("config.json"), R"({"model_type": "qwen2", )");
  check_error([&] { (void)io::load_model_config(dir.path().string()); },
              {"config.json", "not valid JSON"});
  check_error([&] { (void)io::load_model_config(dir.file("nope")); }, {"nope", "cannot open"});
}
