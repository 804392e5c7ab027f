// `tmoe quantize` end to end on the committed fixtures (tests/data/models):
//  - deepseek_v3 -> an fp8 folder: every decoder projection becomes F8_E4M3 with an F32
//    weight_scale_inv of ceil(rows/128) x ceil(cols/128) blocks, and its values read back equal
//    the source within the FP8 bound of quant/quantize.hpp (|x| * 2^-4 + scale_inv * 2^-10 per
//    element); config.json gets quantization_config; other weights are BF16 (the router bias F32);
//  - qwen2 -> Q8_0 GGUF with the Qwen tokenizer, which `tmoe bench` then runs (GGUF loading);
//  - refusals: fp8 to .gguf, q4_0 to a folder, an unknown type.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tmoe/models/weights.hpp"

#include "cli/cli_run.hpp"

namespace {

namespace fs = std::filesystem;

using Result = tmoe::test::CommandResult;
const auto run = tmoe::test::run_command;

const std::string kTmoe = TMOE_CLI_PATH;
const std::string kData = TMOE_TEST_DATA_DIR;

fs::path scratch(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("tmoe_test_cli_" + name);
  fs::remove_all(p);
  return p;
}

}  // namespace

TEST_CASE("tmoe quantize --type fp8 to a folder stores R1's layout") {
  const std::string in = kData + "/models/deepseek_v3";
  const fs::path out = scratch("fp8");
  const Result r =
      run(kTmoe + " quantize --model " + in + " --type fp8 --output " + out.string() + " 2>&1");
  INFO(r.out);
  REQUIRE(r.status == 0);
  std::ifstream cf(out / "config.json");
  const auto cfg = nlohmann::json::parse(cf);
  CHECK(cfg.at("quantization_config").at("quant_method") == "fp8");
  CHECK(cfg.at("quantization_config").at("weight_block_size") == nlohmann::json{128, 128});

  auto src = std::make_shared<tmoe::models::SafetensorsSource>(in);
  auto dst = std::make_shared<tmoe::models::SafetensorsSource>(out.string());
  const tmoe::models::WeightLoader a(src), b(dst);
  std::size_t n_fp8 = 0;
  for (const auto& name : src->checkpoint().names()) {
    // The fixture folder also holds reference.safetensors (input_ids, logits): not weights.
    if (!name.starts_with("model.") && name != "lm_head.weight") continue;
    CAPTURE(name);
    const auto& t = b.raw(name);
    const auto x = a.read_floats(name), y = b.read_floats(name);
    REQUIRE(x.size() == y.size());
    if (t.dtype == tmoe::DType::f8_e4m3) {
      ++n_fp8;
      CHECK(name.find("_proj") != std::string::npos);
      const auto& s = b.raw(name + "_scale_inv");
      CHECK(s.dtype == tmoe::DType::f32);
      const std::size_t rows = t.shape[0], cols = t.shape[1], sc = (cols + 127) / 128;
      CHECK(s.shape == std::vector<std::size_t>{(rows + 127) / 128, sc});
      const float* scale = reinterpret_cast<const float*>(s.data);
      std::size_t bad = 0;
      for (std::size_t i = 0; i < x.size(); ++i) {
        const float si = scale[(i / cols) / 128 * sc + (i % cols) / 128];
        if (std::fabs(x[i] - y[i]) > std::fabs(x[i]) * 0.0625f + si * (1.0f / 1024)) ++bad;
      }
      CHECK(bad == 0);
    } else if (name.ends_with("e_score_correction_bias")) {
      CHECK(t.dtype == tmoe::DType::f32);
      CHECK(x == y);
    } else {
      CHECK(t.dtype == tmoe::DType::bf16);
      std::size_t bad = 0;  // bf16 rounding: relative 2^-8 at most
      for (std::size_t i = 0; i < x.size(); ++i)
        bad += std::fabs(y[i] - x[i]) > std::fabs(x[i]) * (1.0f / 256);
      CHECK(bad == 0);
    }
  }
  // q_a, q_b, kv_a, kv_b, o per layer; gate/up/down of the dense layer, the 8 experts and the
  // shared expert.
  CHECK(n_fp8 == 2 * 5 + 3 + 9 * 3);
  fs::remove_all(out);
}

TEST_CASE("tmoe quantize --type q8_0 to GGUF, then tmoe bench runs the file") {
  const fs::path out = scratch("q8.gguf");
  const Result q =
      run(kTmoe + " quantize --model " + kData + "/models/qwen2 --type q8_0 --output " +
          out.string() + " --tokenizer none 2>&1");
  INFO(q.out);
  REQUIRE(q.status == 0);
  CHECK(q.out.find("Q8_0") != std::string::npos);
  const Result b =
      run(kTmoe + " bench --model " + out.string() + " -p 4 -n 2 -r 1 --bw-mib 16 --json 2>&1");
  INFO(b.out);
  REQUIRE(b.status == 0);
  const auto nl = b.out.rfind('\n', b.out.size() - 2);
  const auto j = nlohmann::json::parse(b.out.substr(nl + 1));
  CHECK(j.at("format") == "gguf");
  CHECK(double(j.at("tg_tok_s")) > 0);
  fs::remove(out);
}

TEST_CASE("tmoe quantize refuses what it cannot write") {
  const std::string m = " quantize --model " + kData + "/models/qwen2";
  const fs::path dir = scratch("refused");
  for (const std::string& opts : {" --type fp8 --output " + (dir / "x.gguf").string(),
                                  " --type q4_0 --output " + dir.string(),
                                  " --type q3_k --output " + (dir / "x.gguf").string()}) {
    CAPTURE(opts);
    const Result r = run(kTmoe + m + opts + " 2>&1 >/dev/null");
    CHECK(r.status != 0);
    CHECK(r.out.rfind("tmoe: [quantize]", 0) == 0);
    CHECK(r.out.find('\n') == r.out.size() - 1);
  }
  fs::remove_all(dir);
}
