// Model presets (models/presets.hpp) and the config.json writer (io/config_json.hpp):
// - every preset survives config.json (write, parse, write gives the same JSON and size);
// - its compile-time dims are in the compiled sets, so a checkpoint of that shape would load;
// - parameter counts match the published sizes: total within 1% (R1 671B, V2-Lite 15.7B,
//   Distill 1.78B / 7.62B / 14.8B / 32.8B / 8.03B / 70.6B) and activated within 3% (R1 37B,
//   V2-Lite 2.4B; published figures are rounded);
// - the tiny presets equal the fixture configs and build a model that runs.
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tmoe/core/compiled_sets.hpp"
#include "tmoe/io/config_json.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/models/presets.hpp"
#include "tmoe/models/random_init.hpp"

using namespace tmoe;

TEST_CASE("every preset round-trips through config.json") {
  for (const auto& p : models::presets()) {
    CAPTURE(p.name);
    const auto j = io::model_config_json(p.config);
    const io::ModelConfig back = io::parse_model_config(j, p.name);
    CHECK(io::model_config_json(back) == j);
    CHECK(back.head_dim == p.config.head_dim);
    CHECK(models::count_params(back).total == models::count_params(p.config).total);
    CHECK(models::count_params(back).active == models::count_params(p.config).active);
    // The compile-time leaves of this shape are compiled.
    if (p.config.is_mla()) {
      CHECK(kHeadDims::contains(p.config.qk_nope_head_dim));
      CHECK(kHeadDims::contains(p.config.v_head_dim));
      CHECK(kRopeDims::contains(p.config.qk_rope_head_dim));
      CHECK(kLatentRanks::contains(p.config.kv_lora_rank));
    } else {
      CHECK(kHeadDims::contains(p.config.head_dim));
    }
  }
}

TEST_CASE("preset parameter counts match the published sizes") {
  std::size_t checked = 0;
  for (const auto& p : models::presets()) {
    if (p.published_params == 0) continue;
    CAPTURE(p.name);
    const auto n = models::count_params(p.config);
    CHECK(std::abs(double(n.total) / p.published_params - 1) <= 0.01);
    if (p.published_active > 0) CHECK(std::abs(double(n.active) / p.published_active - 1) <= 0.03);
    ++checked;
  }
  CHECK(checked == 9);
  // R1 in detail: 61 layers, 3 dense; 58 MoE layers of 256 routed + 1 shared experts of 3 x
  // 7168 x 2048; embedding and LM head 129280 x 7168 each.
  const auto r1 = models::preset("deepseek-r1").config;
  const auto n = models::count_params(r1);
  CHECK(n.embedding == 129280ull * 7168);
  const std::uint64_t expert = 3ull * 7168 * 2048;
  CHECK(n.total - n.active - n.embedding == 58ull * (256 - 8) * expert);
  // bf16 decode reads every active matrix once at 2 bytes (plus float vectors, one embedding row)
  CHECK(models::decode_bytes(r1, 2.0) ==
        doctest::Approx(2.0 * double(n.matrix_active + 7168) + 4.0 * double(n.vector)));
}

TEST_CASE("tiny presets are the fixture configs and build a model that runs") {
  const std::pair<const char*, const char*> tiny[] = {
      {"tiny-deepseek-v3", "deepseek_v3"},
      {"tiny-deepseek-v3-nolora", "deepseek_v3_nolora"},
      {"tiny-qwen2", "qwen2"},
      {"tiny-llama3", "llama3"},
      {"tiny-mixtral", "mixtral"}};
  ThreadPool pool(2);
  for (const auto& [name, folder] : tiny) {
    CAPTURE(name);
    const auto c = models::preset(name).config;
    const auto fixture =
        io::load_model_config(std::string(TMOE_TEST_DATA_DIR) + "/models/" + folder);
    CHECK(io::model_config_json(c) == io::model_config_json(fixture));
    auto w = std::make_shared<models::MemoryWeights>(models::random_weights<float>(c, 5));
    models::LoadOptions opt;
    opt.max_context = 8;
    auto m = models::build_model(c, w, opt);
    auto s = m->new_state(4);
    Matrix<float> logits(std::size_t{1}, c.vocab_size);
    const std::int32_t ids[] = {1, 2, 3, 4};
    m->forward(pool, *s, ids, logits.view());
    CHECK(std::isfinite(logits(0, 0)));
  }
}

TEST_CASE("an unknown preset names the known ones") {
  CHECK_THROWS_WITH_AS(models::preset("deepseek-r2"), doctest::Contains("r1-distill-qwen-1.5b"),
                       Error);
}

TEST_CASE("the config writer gives one description for both config.json layouts of a fixture") {
  // config_legacy.json (Hub layout: rope_scaling, torch_dtype) and config.json (transformers 5
  // layout: rope_parameters, dtype) describe the same model; written back they must agree.
  for (const char* folder : {"deepseek_v3", "deepseek_v3_fp8", "llama3"}) {
    CAPTURE(folder);
    const std::string dir = std::string(TMOE_TEST_DATA_DIR) + "/models/" + folder;
    const auto modern = io::load_model_config(dir + "/config.json");
    const auto legacy = io::load_model_config(dir + "/config_legacy.json");
    CHECK(io::model_config_json(legacy) == io::model_config_json(modern));
  }
}
