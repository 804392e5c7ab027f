// examples/custom_variant: builds the MLA + Mixtral-router + Q4_0-experts model of
// mla_mixtral_q4.hpp over seeded random weights, runs a greedy continuation of a few tokens and
// prints what it did: the shapes, the bytes of weights, prefill and decode tokens/s, and how many
// tokens each expert of each layer received.
//
//   custom_variant [-n NEW_TOKENS] [-t THREADS] [--small]
// --small uses a toy size (what ctest runs); the default is hidden 768, 6 layers, 16 experts top-2.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "custom_variant/mla_mixtral_q4.hpp"
#include "tmoe/models/random_init.hpp"

int main(int argc, char** argv) try {
  using namespace tmoe;
  int n_new = 16, threads = 2;
  bool small = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--small"))
      small = true;
    else if (i + 1 < argc && !std::strcmp(argv[i], "-n"))
      n_new = std::atoi(argv[++i]);
    else if (i + 1 < argc && !std::strcmp(argv[i], "-t"))
      threads = std::atoi(argv[++i]);
    else
      fail("custom_variant", "unknown argument '", argv[i], "' (-n N, -t THREADS, --small)");
  }
  check(n_new >= 1 && threads >= 1, "custom_variant", "-n and -t must be >= 1");
  // hidden, layers, heads, experts, top-k, expert width, vocab
  const io::ModelConfig c = small ? custom::mla_mixtral_config(256, 2, 4, 8, 2, 128, 512)
                                  : custom::mla_mixtral_config(768, 6, 8, 16, 2, 512, 4096);
  auto weights = std::make_shared<models::MemoryWeights>(models::random_weights<float>(c, 7));
  const auto t0 = std::chrono::steady_clock::now();
  auto model = custom::build_mla_mixtral_q4(c, weights, 512);
  const double build_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "custom variant: MLA (q_lora %zu, kv_lora %zu, %zu heads) + softmax top-%zu router over %zu "
      "Q4_0 experts (width %zu), hidden %zu, %zu layers, vocab %zu\n",
      c.q_lora_rank, c.kv_lora_rank, c.num_attention_heads, c.num_experts_per_tok,
      c.n_routed_experts, c.moe_intermediate_size, c.hidden_size, c.num_hidden_layers,
      c.vocab_size);
  std::printf("quantized %.1f MB of gate + expert weights to %.1f MB of Q4_0 in %.2f s\n",
              double(model->q4_bytes) * 128.0 / 18.0 / 1e6, model->q4_bytes / 1e6, build_s);

  ThreadPool pool(threads);
  const std::vector<std::int32_t> prompt = {1, 17, 42, 99, 7, 5};
  auto state = model->net->new_state(prompt.size() + n_new);
  Matrix<float> logits(std::size_t{1}, c.vocab_size);
  std::vector<std::vector<std::size_t>> load(c.num_hidden_layers,
                                             std::vector<std::size_t>(c.n_routed_experts));
  auto count = [&] {
    for (const auto& s : model->net->expert_stats())
      for (std::size_t e = 0; e < c.n_routed_experts; ++e)
        load[s.layer][e] += s.stats.tokens_per_expert[e];
  };
  auto argmax = [&] {
    std::int32_t best = 0;
    for (std::size_t v = 1; v < c.vocab_size; ++v)
      if (logits(0, v) > logits(0, std::size_t(best))) best = std::int32_t(v);
    return best;
  };
  const auto t1 = std::chrono::steady_clock::now();
  model->net->forward(pool, *state, prompt, logits.view());
  count();
  const auto t2 = std::chrono::steady_clock::now();
  std::vector<std::int32_t> out = {argmax()};
  for (int i = 1; i < n_new; ++i) {
    model->net->forward(pool, *state, std::span<const std::int32_t>(&out.back(), 1), logits.view());
    count();
    out.push_back(argmax());
  }
  const auto t3 = std::chrono::steady_clock::now();
  const double pre = std::chrono::duration<double>(t2 - t1).count(),
               dec = std::chrono::duration<double>(t3 - t2).count();
  std::printf("greedy tokens:");
  for (auto t : out) std::printf(" %d", t);
  std::printf("\nprefill %zu tokens: %.1f tok/s | decode %d tokens: %.2f tok/s (%d threads)\n",
              prompt.size(), prompt.size() / pre, n_new - 1, n_new > 1 ? (n_new - 1) / dec : 0.0,
              threads);
  for (std::size_t l = 0; l < load.size(); ++l) {
    std::printf("layer %zu expert load (tokens per expert):", l);
    for (auto x : load[l]) std::printf(" %zu", x);
    std::printf("\n");
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "custom_variant: %s\n", e.what());
  return 1;
}
