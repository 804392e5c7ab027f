// bench_tokenizer: single-threaded encode speed of the byte-level BPE tokenizer on English and
// Chinese text with the DeepSeek-V3 and Qwen3 tokenizer.json files from tests/data. Reports input
// bytes/s (target: >= 5 MB/s on both languages).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "tmoe/io/tokenizer.hpp"

namespace {

const char* kEnglish =
    "The quick brown fox jumps over the lazy dog. In 1984, researchers at the laboratory measured "
    "3.14159 units of throughput; the results (published later) were surprising! "
    "Mixture-of-Experts "
    "models route each token to a few experts, which keeps the compute per token small while the "
    "parameter count grows. \"Don't panic,\" she said, and we'll see what happens next.\n"
    "Memory bandwidth, not arithmetic, bounds decoding: every weight is read once per token.\n";
const char* kChinese =
    "深度求索发布了新的推理模型，它在数学、代码和自然语言推理任务上表现出色。"
    "混合专家模型把每个词元路由到少数几个专家，从而在参数量增长的同时保持每个词元的计算量较小。"
    "解码速度受内存带宽限制：每生成一个词元，所有被激活的权重都要读取一次。今天天气很好，我们去公园"
    "散步吧。\n";

std::string repeat(const char* s, std::size_t bytes) {
  std::string out;
  while (out.size() < bytes) out += s;
  return out;
}

// tests/data of this source tree (or $TMOE_TEST_DATA_DIR).
std::string data_dir() {
  if (const char* e = std::getenv("TMOE_TEST_DATA_DIR")) return e;
  return (std::filesystem::path(__FILE__).parent_path().parent_path() / "tests" / "data").string();
}

const tmoe::io::Tokenizer& tokenizer(int which) {
  static const tmoe::io::Tokenizer ds =
      tmoe::io::Tokenizer::from_file(data_dir() + "/tokenizers/deepseek_v3/tokenizer.json");
  static const tmoe::io::Tokenizer qw =
      tmoe::io::Tokenizer::from_file(data_dir() + "/tokenizers/qwen3/tokenizer.json");
  return which == 0 ? ds : qw;
}

void BM_encode(benchmark::State& state, int which, const char* sample) {
  const auto& tok = tokenizer(which);
  const std::string text = repeat(sample, 1 << 20);
  std::vector<tmoe::io::TokenId> ids;
  for (auto _ : state) {
    ids.clear();
    tok.encode_into(text, ids);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(ids.size());
  state.counters["bytes_per_token"] =
      static_cast<double>(text.size()) / static_cast<double>(ids.size());
}

BENCHMARK_CAPTURE(BM_encode, deepseek_v3_english, 0, kEnglish)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_encode, deepseek_v3_chinese, 0, kChinese)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_encode, qwen3_english, 1, kEnglish)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_encode, qwen3_chinese, 1, kChinese)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
