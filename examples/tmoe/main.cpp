// tmoe: the command-line program. Subcommands follow the contract in docs/architecture.md
// (generate, logits, tokenize, bench, quantize, init); each lives in cmd_<name>.cpp. Every
// failure exits non-zero with one line on stderr naming what was wrong and where.
#include <cstdio>
#include <exception>
#include <string_view>
#include <vector>

#include "commands.hpp"
#include "tmoe/tmoe.hpp"

namespace {

constexpr const char* kUsage =
    R"(tmoe )" TMOE_VERSION_STRING R"( - Mixture-of-Experts inference (DeepSeek-R1 family)

usage: tmoe <command> [options]

commands:
  generate  --model PATH --prompt TEXT [-n N] [--temp T] [--top-k K] [--top-p P] [--seed S] [--chat]
            [--device cpu|cuda]  stream generated text; without --model runs the built-in
            default model
  logits    --model PATH --input IN.safetensors --output OUT.safetensors [--device cpu|cuda]
            (generate, logits: --weights q8_0|q4_0|q4_k|q6_k quantizes the matrices at load)
  tokenize  --model PATH (--text TEXT | --file LIST.json)
  bench     --model PATH [-p N] [-n N] [-t THREADS] [-r REPS] [--json] [--bw-mib M] [--seed S]
            prefill (pp, default 512) and decode (tg, default 128) tokens/s: median, min, max over
            REPS (default 5) fresh runs after a warm-up, beside the THREADS-thread (default 2)
            read bandwidth (sum over M MiB, default 1024); without --model benches the default model
  quantize  --model PATH --type TYPE --output (FILE.gguf | DIR) [--tokenizer FILE|none]
            FILE.gguf (llama.cpp loads it): TYPE f32 f16 bf16 q8_0 q4_0 q4_k q6_k;
            DIR (Hugging Face folder): TYPE f32 f16 bf16 fp8 (R1's F8_E4M3 + 128x128 scale_inv)
  init      (--config config.json | --preset NAME) --output DIR [--seed S] [--config-only]
  info      [--preset NAME | --model PATH]  the CPU kernels chosen for this machine, and a
            preset's sizes or a model's formats and decode bytes

PATH is a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file.
--device cuda (tmoe built with CUDA): dense Qwen2 / Llama and DeepSeek (MLA, MoE) models, and the
built-in default model, on the GPU.
Environment: TMOE_ISA=portable|avx2|avx512|avx512_vnni_bf16 forces a CPU kernel set.
)";

struct Command {
  std::string_view name;
  int (*run)(const tmoe::cli::Argv&);
};

// The registry: one line per subcommand.
constexpr Command kCommands[] = {
    {"info", &tmoe::cli::cmd_info},         {"tokenize", &tmoe::cli::cmd_tokenize},
    {"generate", &tmoe::cli::cmd_generate}, {"logits", &tmoe::cli::cmd_logits},
    {"init", &tmoe::cli::cmd_init},         {"bench", &tmoe::cli::cmd_bench},
    {"quantize", &tmoe::cli::cmd_quantize},
};

}  // namespace

int main(int argc, char** argv) {
  const tmoe::cli::Argv args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "--version") {
    std::puts(TMOE_VERSION_STRING);
    return 0;
  }
  if (args.size() >= 2 && (args[1] == "--help" || args[1] == "-h")) {  // tmoe bench --help
    std::fputs(kUsage, stdout);
    return 0;
  }
  try {
    for (const auto& c : kCommands)
      if (c.name == args[0]) return c.run(tmoe::cli::Argv(args.begin() + 1, args.end()));
    tmoe::fail("tmoe", "unknown command '", args[0], "' (see tmoe --help)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tmoe: %s\n", e.what());
    return 1;
  }
}
