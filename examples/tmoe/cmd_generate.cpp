// tmoe generate: streams generated text. Without --model it runs the built-in default model (a
// small random-weight DeepSeek-R1-architecture decoder) so a fresh checkout shows the whole
// pipeline; it then prints tokens/s and the expert load of every MoE layer on stderr.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "device.hpp"
#include "model_path.hpp"
#include "tmoe/io/chat_template.hpp"
#include "tmoe/io/tokenizer.hpp"
#include "tmoe/models/default_model.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/runtime/session.hpp"

namespace tmoe::cli {

namespace {

void print_stats(const GenerateStats& st, const models::Model& m, int threads) {
  std::fprintf(stderr,
               "\n\n[tmoe] %s weights, %d threads | prompt %zu tokens: %.1f tok/s | generated %zu "
               "tokens: %.2f tok/s | first token after %.1f ms | stop: %s\n",
               m.weight_format().c_str(), threads, st.prompt_tokens, st.prefill_tok_s(),
               st.new_tokens, st.decode_tok_s(), 1e3 * st.first_token_seconds,
               st.stop_reason.c_str());
  std::fprintf(stderr, "[tmoe] weights read per decoded token: %.1f MB\n",
               m.decode_weight_bytes() / 1e6);
  for (std::size_t i = 0; i < st.expert_tokens.size(); ++i) {
    const auto& c = st.expert_tokens[i];
    std::size_t total = 0, mx = 0;
    for (auto x : c) total += x, mx = std::max(mx, x);
    const double mean = c.empty() ? 0 : double(total) / c.size();
    std::fprintf(stderr, "[tmoe] layer %2zu expert load (tokens per expert):", st.moe_layers[i]);
    for (auto x : c) std::fprintf(stderr, " %zu", x);
    std::fprintf(stderr, "  | max/mean %.2f\n", mean > 0 ? mx / mean : 0.0);
  }
}

}  // namespace

int cmd_generate(const Argv& argv) {
  Args args("generate", argv,
            {"--model", "--prompt", "-n", "--temp", "--top-k", "--top-p", "--min-p", "--seed", "-t",
             "--ctx", "--repeat-penalty", "--device", "--weights"},
            {"--chat"});
  const bool builtin = !args.has("--model");
  const std::string path = args.str("--model");
  if (!builtin) check_model_path(path, "generate");
  const bool cuda = want_cuda(args.str("--device", "cpu"), "generate");
  const long long n = args.integer("-n", 64), threads = args.integer("-t", 2);
  check(n >= 0 && n <= 1000000, "generate", "-n must be in [0, 1000000], got ", n);
  check(threads >= 1 && threads <= 1024, "generate", "-t must be in [1, 1024], got ", threads);

  models::LoadOptions opt;
  opt.max_context = static_cast<std::size_t>(args.integer("--ctx", 4096));
  std::unique_ptr<models::Model> model;
  io::Tokenizer tok;
  io::ChatTemplate chat;
  if (builtin) {
    // Made first, so that a failure (no CUDA) is the only line on stderr.
    model = cuda ? cuda_default_model(0x7a0e, opt, "generate") : models::default_model(0x7a0e, opt);
    std::fprintf(stderr,
                 "[tmoe] no --model: running the built-in default model (random weights%s)\n",
                 cuda ? ", on the GPU" : "");
    tok = models::default_tokenizer();
    chat = models::default_chat_template();
  } else {
    std::fprintf(stderr, "[tmoe] loading %s\n", path.c_str());
    opt.progress = load_progress_bar();
    opt.quantize = weights_option(args, "generate");
    check(!(cuda && opt.quantize), "generate", "--weights is not supported with --device cuda");
    model = cuda ? load_cuda_model(path, opt, "generate") : models::load_model(path, opt);
    tok = model_tokenizer(path);
    if (args.has("--chat")) chat = model_chat_template(path);
  }
  const std::string prompt = args.str("--prompt", builtin ? "Hello, tmoe!" : "");
  check(!prompt.empty(), "generate", "missing --prompt");
  std::vector<std::int32_t> ids;
  if (args.has("--chat")) {
    ids = tok.encode(chat.render({{"user", prompt}}, true));
  } else {
    if (model->config().bos_token_id)
      ids.push_back(static_cast<std::int32_t>(*model->config().bos_token_id));
    const auto t = tok.encode(prompt);
    ids.insert(ids.end(), t.begin(), t.end());
  }
  for (auto id : ids)
    check(id >= 0 && static_cast<std::size_t>(id) < model->vocab_size(), "generate", "token id ",
          id, " is outside the model's vocabulary of ", model->vocab_size());

  GenerateOptions g;
  g.max_new_tokens = static_cast<std::size_t>(n);
  g.sampler.temperature = static_cast<float>(args.real("--temp", 0.6));
  g.sampler.top_k = static_cast<int>(args.integer("--top-k", 0));
  g.sampler.top_p = static_cast<float>(args.real("--top-p", 0.95));
  g.sampler.min_p = static_cast<float>(args.real("--min-p", 0.0));
  g.sampler.repetition_penalty = static_cast<float>(args.real("--repeat-penalty", 1.0));
  g.sampler.seed = static_cast<std::uint64_t>(args.integer("--seed", 0));
  for (auto e : model->config().eos_token_ids) g.stop_ids.push_back(static_cast<std::int32_t>(e));

  ThreadPool pool(static_cast<int>(threads));
  Session session(*model, pool,
                  std::min<std::size_t>(model->max_context(), ids.size() + g.max_new_tokens + 1));
  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  GenerateStats st;
  if (g.max_new_tokens > 0)
    session.generate(
        ids, tok, g,
        [](const std::string& piece) {
          std::fputs(piece.c_str(), stdout);
          std::fflush(stdout);
          return true;
        },
        &st);
  std::fputs("\n", stdout);
  print_stats(st, *model, static_cast<int>(threads));
  return 0;
}

}  // namespace tmoe::cli
