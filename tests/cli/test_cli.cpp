// The `tmoe` program end to end (the contract of docs/architecture.md), run as a subprocess:
// - `tmoe logits` on every fixture family writes logits within 1e-4 x max |ref| of
//   reference.safetensors (float32 compute, as tests/models/test_fixtures.cpp);
// - `tmoe generate --temp 0` continues greedy.json's prompt with its 16 reference ids (through a
//   copy of the fixture folder with a tokenizer.json whose every id is a special token "<|tN|>",
//   and without bos_token_id, which the reference prompt does not start with);
// - bad inputs (missing paths, damaged safetensors, unknown architectures, out-of-vocabulary ids,
//   unknown presets, too large random weights) exit with status 1 and exactly one line on stderr;
// - `tmoe init --preset` writes a folder that `tmoe logits` runs, `tmoe info --preset` prints
//   the counted size.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/tokenizer.hpp"

using namespace tmoe;
namespace fs = std::filesystem;

namespace {

const char* const kFamilies[] = {
    "qwen2", "llama3", "mixtral", "deepseek_v3", "deepseek_v3_nolora", "deepseek_v3_fp8"};

std::string fixture(const std::string& family) {
  return std::string(TMOE_TEST_DATA_DIR) + "/models/" + family;
}

fs::path scratch(const std::string& name) {
  const fs::path p = fs::path(TMOE_CLI_SCRATCH) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Result {
  int status = -1;  // exit status; -1 when killed by a signal
  std::string out, err;
};

// Runs `tmoe <args>` (args already shell-quoted where needed).
Result run_tmoe(const std::string& args) {
  const fs::path dir = fs::path(TMOE_CLI_SCRATCH);
  fs::create_directories(dir);
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd = std::string("'") + TMOE_CLI_PATH + "' " + args + " >'" + out.string() +
                          "' 2>'" + err.string() + "'";
  const int rc = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = read_file(out), r.err = read_file(err);
  return r;
}

std::size_t lines(const std::string& s) {
  std::size_t n = 0;
  for (char c : s) n += c == '\n';
  return n + (!s.empty() && s.back() != '\n');
}

// Exit status 1 and one line on stderr that mentions `what`.
void check_fails(const std::string& args, const std::string& what) {
  CAPTURE(args);
  const Result r = run_tmoe(args);
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(lines(r.err) == 1);
  CHECK(r.err.find(what) != std::string::npos);
}

void write_ids(const fs::path& file, std::vector<std::int64_t> ids) {
  io::SafetensorsWriter w;
  w.add<std::int64_t>("input_ids", {1, ids.size()}, std::span<const std::int64_t>(ids));
  w.write(file.string());
}

// A copy of a fixture folder: its weights, its config without bos_token_id, and a tokenizer
// whose every id N of the model is the special token "<|tN|>" (the 256 byte tokens a byte-level
// vocabulary needs sit above the model's ids).
fs::path folder_with_tokenizer(const std::string& family) {
  const fs::path dir = scratch("gen_" + family);
  fs::create_symlink(fs::absolute(fixture(family) + "/model.safetensors"),
                     dir / "model.safetensors");
  auto cfg = nlohmann::json::parse(read_file(fixture(family) + "/config.json"));
  cfg.erase("bos_token_id");
  std::ofstream(dir / "config.json") << cfg.dump(2);
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  const int V = cfg["vocab_size"].get<int>();
  for (int b = 0; b < 256; ++b)  // byte-level BPE needs every byte; ids past the model's vocab
    vocab[io::ByteLevelMap::get().encode(std::string(1, static_cast<char>(b)))] = V + b;
  for (int i = 0; i < V; ++i)
    added.push_back({{"id", i}, {"content", "<|t" + std::to_string(i) + "|>"}, {"special", true}});
  nlohmann::json tok = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
      {"added_tokens", added},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"use_regex", false}}}};
  std::ofstream(dir / "tokenizer.json") << tok.dump();
  return dir;
}

std::vector<int> ids_in(const std::string& text) {
  std::vector<int> ids;
  const std::regex re("<\\|t([0-9]+)\\|>");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it)
    ids.push_back(std::stoi((*it)[1].str()));
  return ids;
}

}  // namespace

TEST_CASE("tmoe logits matches the reference logits of every fixture family") {
  for (const char* family : kFamilies) {
    SUBCASE(family) {
      const fs::path out = scratch(std::string("logits_") + family) / "out.safetensors";
      const std::string ref = fixture(family) + "/reference.safetensors";
      const Result r = run_tmoe("logits --model '" + fixture(family) + "' --input '" + ref +
                                "' --output '" + out.string() + "'");
      INFO("stderr: " << r.err);
      REQUIRE(r.status == 0);
      io::SafetensorsModel got(out.string()), want(ref);
      const auto g = got.view<float, DExtents<3>>("logits");
      const auto w = want.view<float, DExtents<3>>("logits");
      REQUIRE(g.extent(0) == w.extent(0));
      REQUIRE(g.extent(1) == w.extent(1));
      REQUIRE(g.extent(2) == w.extent(2));
      double err = 0, scale = 0;
      for (std::size_t b = 0; b < w.extent(0); ++b)
        for (std::size_t t = 0; t < w.extent(1); ++t)
          for (std::size_t v = 0; v < w.extent(2); ++v) {
            err = std::max(err, std::abs(double(g(b, t, v)) - double(w(b, t, v))));
            scale = std::max(scale, std::abs(double(w(b, t, v))));
          }
      INFO(family << ": max |err| " << err << ", max |ref| " << scale);
      CHECK(err <= 1e-4 * scale);
    }
  }
}

TEST_CASE("tmoe generate --temp 0 reproduces the reference greedy tokens") {
  for (const char* family : kFamilies) {
    SUBCASE(family) {
      const auto g = nlohmann::json::parse(read_file(fixture(family) + "/greedy.json"));
      const auto prompt = g["prompt_ids"].get<std::vector<int>>();
      const auto want = g["greedy_ids"].get<std::vector<int>>();
      std::string text;
      for (int id : prompt) text += "<|t" + std::to_string(id) + "|>";
      const fs::path dir = folder_with_tokenizer(family);
      const Result r = run_tmoe("generate --model '" + dir.string() + "' --prompt '" + text +
                                "' --temp 0 -n " + std::to_string(want.size()));
      INFO("stderr: " << r.err);
      REQUIRE(r.status == 0);
      const auto ids = ids_in(r.out);
      REQUIRE(ids.size() == prompt.size() + want.size());
      CHECK(std::vector<int>(ids.begin(), ids.begin() + prompt.size()) == prompt);
      CHECK(std::vector<int>(ids.begin() + prompt.size(), ids.end()) == want);
    }
  }
}

TEST_CASE("bad inputs exit with status 1 and one line on stderr") {
  const std::string ref = fixture("qwen2") + "/reference.safetensors";
  const fs::path dir = scratch("bad");
  const std::string out = " --output '" + (dir / "out.safetensors").string() + "'";

  SUBCASE("missing paths") {
    check_fails("logits --model '" + (dir / "nope").string() + "' --input '" + ref + "'" + out,
                "does not exist");
    check_fails("logits --model '" + fixture("qwen2") + "' --input '" + (dir / "nope").string() +
                    ".safetensors'" + out,
                "nope");
    check_fails("generate --model '" + (dir / "nope").string() + "' --prompt hi", "does not exist");
    check_fails("init --config '" + (dir / "nope.json").string() + "'" + out, "nope.json");
  }
  SUBCASE("damaged safetensors") {
    const std::string bytes = read_file(fixture("qwen2") + "/model.safetensors");
    const fs::path m = scratch("damaged");
    fs::copy_file(fixture("qwen2") + "/config.json", m / "config.json");
    std::ofstream(m / "model.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    check_fails("logits --model '" + m.string() + "' --input '" + ref + "'" + out, "safetensors");
    std::string garbled = bytes;
    garbled[8] = '[';  // header JSON no longer an object
    std::ofstream(m / "model.safetensors", std::ios::binary | std::ios::trunc) << garbled;
    check_fails("logits --model '" + m.string() + "' --input '" + ref + "'" + out, "safetensors");
    std::ofstream(dir / "in.safetensors", std::ios::binary) << std::string("\x10\0\0", 3);
    check_fails("logits --model '" + fixture("qwen2") + "' --input '" +
                    (dir / "in.safetensors").string() + "'" + out,
                "in.safetensors");
  }
  SUBCASE("unknown architecture in config.json") {
    const fs::path m = scratch("unknown_arch");
    auto cfg = nlohmann::json::parse(read_file(fixture("qwen2") + "/config.json"));
    cfg["model_type"] = "gpt_neox";
    cfg["architectures"] = {"GPTNeoXForCausalLM"};
    std::ofstream(m / "config.json") << cfg.dump();
    fs::create_symlink(fs::absolute(fixture("qwen2") + "/model.safetensors"),
                       m / "model.safetensors");
    check_fails("logits --model '" + m.string() + "' --input '" + ref + "'" + out, "gpt_neox");
  }
  SUBCASE("out-of-vocabulary ids in --input") {
    write_ids(dir / "oov.safetensors", {1, 2, 512});
    check_fails("logits --model '" + fixture("qwen2") + "' --input '" +
                    (dir / "oov.safetensors").string() + "'" + out,
                "512");
    write_ids(dir / "neg.safetensors", {-1});
    check_fails("logits --model '" + fixture("qwen2") + "' --input '" +
                    (dir / "neg.safetensors").string() + "'" + out,
                "-1");
  }
  SUBCASE("presets") {
    check_fails("info --preset deepseek-r2", "unknown preset");
    check_fails("init --preset deepseek-r2 --output '" + dir.string() + "'", "unknown preset");
    check_fails("init --preset deepseek-r1 --output '" + (dir / "r1").string() + "'",
                "--config-only");
  }
}

// The built-in default model with --device cuda: a tmoe built without CUDA says so in one line;
// one built with CUDA runs it on the GPU (status 0, the prompt and the generated text on stdout)
// or, where there is no device, names the missing device in one line. Never the old refusal
// ("--device cuda needs --model").
TEST_CASE("tmoe generate --device cuda without --model: the default model on the GPU, or why not") {
  const Result r = run_tmoe("generate --device cuda -n 4 --temp 0");
  INFO("stderr: " << r.err);
  CHECK(r.err.find("needs --model") == std::string::npos);
  if (!TMOE_CLI_CUDA) {
    CHECK(r.status == 1);
    CHECK(lines(r.err) == 1);
    CHECK(r.err.find("built without CUDA") != std::string::npos);
  } else if (r.status == 0) {
    CHECK(r.out.starts_with("Hello, tmoe!"));
    CHECK(r.out.size() > std::string("Hello, tmoe!").size());
    CHECK(r.err.find("built-in default model") != std::string::npos);
  } else {
    CHECK(r.status == 1);
    CHECK(lines(r.err) == 1);
    CHECK(r.err.find("no CUDA device") != std::string::npos);
  }
}

TEST_CASE("tmoe init --preset writes a model tmoe runs; tmoe info --preset counts it") {
  const fs::path dir = scratch("init_preset");
  Result r = run_tmoe("init --preset tiny-mixtral --dtype f32 --seed 3 --output '" +
                      (dir / "m").string() + "'");
  INFO("stderr: " << r.err);
  REQUIRE(r.status == 0);
  write_ids(dir / "in.safetensors", {1, 2, 3});
  r = run_tmoe("logits --model '" + (dir / "m").string() + "' --input '" +
               (dir / "in.safetensors").string() + "' --output '" +
               (dir / "out.safetensors").string() + "'");
  REQUIRE(r.status == 0);
  io::SafetensorsModel got((dir / "out.safetensors").string());
  CHECK(got.view<float, DExtents<3>>("logits").extent(2) == 512);

  r = run_tmoe("init --preset deepseek-r1 --config-only --output '" + (dir / "r1").string() + "'");
  REQUIRE(r.status == 0);
  const auto cfg = nlohmann::json::parse(read_file(dir / "r1" / "config.json"));
  CHECK(cfg["hidden_size"] == 7168);
  CHECK(cfg["rope_scaling"]["factor"] == 40.0);
  CHECK(cfg["quantization_config"]["weight_block_size"] == nlohmann::json({128, 128}));

  r = run_tmoe("info --preset deepseek-r1");
  REQUIRE(r.status == 0);
  CHECK(r.out.find("671.026B total") != std::string::npos);
  CHECK(r.out.find("q4_0") != std::string::npos);
}

TEST_CASE("tmoe --help and <command> --help print the usage and exit 0") {
  for (const char* args : {"--help", "bench --help", "quantize -h", "generate --help"}) {
    CAPTURE(args);
    const Result r = run_tmoe(args);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("usage: tmoe <command>") != std::string::npos);
    CHECK(r.out.find("bench     --model PATH") != std::string::npos);
  }
}
