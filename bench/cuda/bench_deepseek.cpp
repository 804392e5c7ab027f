// bench_cuda_deepseek: decode ms/token of cuda::DeepseekModel at DeepSeek-R1's real shape, as a
// pair of layers (one dense, one MoE: first_k_dense_replace 1) with the 129280-row embedding and
// LM head: hidden 7168, 128 heads, q_lora 1536, kv_lora 512, 256 routed experts top-8 in 8 groups
// (top-4 groups), 1 shared, moe_intermediate 2048, dense intermediate 18432. Random weights made
// on the device (never zeros), bf16 and FP8-block (kv_b, embedding and head bf16, the router
// float32, as in R1's checkpoint).
//
//   bench_cuda_deepseek [--context N] [--tokens N] [--layers N] [--prefill N]
//
// Per format: feeds `context` tokens through the one-token decode graph, then times `tokens` more
// decode steps, each between two CUDA events on the model's stream (token and position upload,
// graph replay), and prints the median and the 10th / 90th percentiles; the weight bytes one
// token reads (active experts only) over the median gives the achieved bandwidth, and over the
// device-to-device copy bandwidth measured first (2 GiB, bytes read + written) the bytes floor.
//
// Prefill (`prefill` tokens, default 512; 0 skips): the built-in default model's shape (random
// weights, bf16) and the R1 layer pair (bf16, FP8-block), each prompt into a fresh state token by
// token (one decode graph replay per token, as forward() with prefill_gemm = false) and as one
// batched forward() (chunk = prefill: GEMMs, MLA of all tokens, per-expert GEMMs); wall time from
// the first upload to the last token's logits on the host (token by token: to the last replay's
// end), best of 3, in tokens/s; and the R1 pair with the bf16 latent cache (tensor-core MLA), whose
// difference to the float cache row is mostly attention time.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tmoe/backend/cuda/deepseek_model.hpp"
#include "tmoe/models/default_model.hpp"

using namespace tmoe;

namespace {

io::ModelConfig r1_pair(std::size_t layers) {
  io::ModelConfig c;
  c.family = io::Family::deepseek_v3;
  c.model_type = "deepseek_v3";
  c.vocab_size = 129280, c.hidden_size = 7168, c.num_hidden_layers = layers;
  c.intermediate_size = 18432;
  c.num_attention_heads = c.num_key_value_heads = 128;
  c.max_position_embeddings = 163840;
  c.norm_eps = 1e-6;
  c.q_lora_rank = 1536, c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128, c.qk_rope_head_dim = 64, c.v_head_dim = 128, c.head_dim = 64;
  c.n_routed_experts = 256, c.num_experts_per_tok = 8, c.n_shared_experts = 1;
  c.moe_intermediate_size = 2048, c.first_k_dense_replace = 1;
  c.n_group = 8, c.topk_group = 4, c.routed_scaling_factor = 2.5;
  c.topk_method = io::TopkMethod::noaux_tc, c.scoring_func = io::ScoringFunc::sigmoid;
  c.norm_topk_prob = true;
  c.rope.type = io::RopeType::yarn;
  c.rope.theta = 10000.0, c.rope.factor = 40.0, c.rope.original_max_position_embeddings = 4096;
  c.rope.beta_fast = 32.0, c.rope.beta_slow = 1.0, c.rope.mscale = 1.0, c.rope.mscale_all_dim = 1.0;
  c.rope.interleave = true;
  return c;
}

double copy_gbs() {
  const std::size_t bytes = std::size_t(2) << 30;
  cuda::DeviceBuffer<float> a(bytes / 4), b(bytes / 4);
  cuda::fill_uniform(a.data(), a.size(), 3, -1.f, 1.f);
  cuda::Event e0, e1;
  std::vector<float> ms;
  for (int i = 0; i < 12; ++i) {
    e0.record(nullptr);
    cuda::copy_device(b.data(), a.data(), bytes);
    e1.record(nullptr);
    cuda::synchronize_device();
    if (i >= 2) ms.push_back(e1.since(e0));
  }
  std::sort(ms.begin(), ms.end());
  return 2.0 * double(bytes) / (ms[ms.size() / 2] * 1e-3) / 1e9;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Token-by-token and batched prefill of T tokens, best of 3 each; one table row.
void prefill_row(const char* shape, const io::ModelConfig& cfg, bool fp8, std::size_t T,
                 bool bf16_cache = false) {
  cuda::ModelOptions opt;
  opt.mla_bf16_cache = bf16_cache;
  opt.max_context = T + 1;
  opt.chunk = T;
  cuda::DeepseekModel::RandomWeights rw;
  rw.seed = 11, rw.fp8 = fp8;
  cuda::DeepseekModel m(cfg, rw, opt);
  std::vector<std::int32_t> ids(T);
  for (std::size_t t = 0; t < T; ++t) ids[t] = std::int32_t((t * 7919 + 13) % cfg.vocab_size);
  ThreadPool pool(1);
  Matrix<float> lg(1, cfg.vocab_size);
  double tok = 1e30, bat = 1e30;
  for (int rep = 0; rep < 4; ++rep) {  // rep 0 warms up (graph capture, cuBLAS heuristics)
    auto st = m.new_state(T + 1);
    m.synchronize();
    auto t0 = std::chrono::steady_clock::now();
    for (std::int32_t id : ids) m.decode(*st, id);
    m.synchronize();
    if (rep > 0) tok = std::min(tok, seconds_since(t0));
    auto sb = m.new_state(T + 1);
    m.synchronize();
    t0 = std::chrono::steady_clock::now();
    m.forward(pool, *sb, ids, lg.view());
    if (rep > 0) bat = std::min(bat, seconds_since(t0));
  }
  std::printf("| %s | %s | %zu | %.1f | %.1f | %.2f | %.1f |\n", shape, m.weight_format().c_str(),
              T, double(T) / tok, double(T) / bat, tok / bat, 1e3 * bat);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t context = 512, tokens = 64, layers = 2, prefill = 512;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--context")) context = std::strtoul(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--tokens")) tokens = std::strtoul(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--layers")) layers = std::strtoul(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--prefill")) prefill = std::strtoul(argv[i + 1], nullptr, 10);
  }
  if (cuda::device_count() == 0) {
    std::printf("bench_cuda_deepseek: skipped: no CUDA device\n");
    return 77;
  }
  const cuda::DeviceInfo dev = cuda::device_info(0);
  const double bw = copy_gbs();
  std::printf("%s, %d SMs; device-to-device copy %.1f GB/s (read + write)\n", dev.name,
              dev.sm_count, bw);
  const io::ModelConfig cfg = r1_pair(layers);
  std::printf(
      "DeepSeek-R1 shape, %zu layers (first dense, then MoE), context %zu, %zu timed "
      "tokens\n\n",
      layers, context, tokens);
  std::printf(
      "| tmoe cuda::DeepseekModel | ms/token (median) | p10 | p90 | weight MB/token | "
      "GB/s | bytes floor ms | floor / median |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const int variant : {0, 1, 2}) {
    const bool fp8 = variant == 1;
    cuda::ModelOptions opt;
    opt.max_context = context + tokens + 1;
    opt.mla_bf16_cache = variant == 2;
    cuda::DeepseekModel::RandomWeights rw;
    rw.seed = 7, rw.fp8 = fp8;
    cuda::DeepseekModel m(cfg, rw, opt);
    auto st = m.new_state(context + tokens + 1);
    for (std::size_t t = 0; t < context; ++t)
      m.decode(*st, std::int32_t((t * 7919 + 13) % cfg.vocab_size));
    m.synchronize();
    cuda::Event a, b;
    std::vector<float> ms;
    for (std::size_t t = 0; t < tokens; ++t) {
      a.record(m.stream());
      m.decode(*st, std::int32_t((t * 104729 + 7) % cfg.vocab_size));
      b.record(m.stream());
      m.synchronize();
      ms.push_back(b.since(a));
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2], p10 = ms[ms.size() / 10], p90 = ms[ms.size() * 9 / 10];
    const double mb = double(m.decode_weight_bytes()) / 1e6;
    const double floor_ms = mb * 1e6 / (bw * 1e9) * 1e3;
    std::printf("| %s%s | %.3f | %.3f | %.3f | %.1f | %.1f | %.3f | %.3f |\n",
                m.weight_format().c_str(), opt.mla_bf16_cache ? ", bf16 latent cache" : "", med,
                p10, p90, mb, mb * 1e6 / (med * 1e-3) / 1e9, floor_ms, floor_ms / med);
  }
  if (prefill > 0 && prefill <= 4096) {
    std::printf(
        "\nprefill of %zu tokens into a fresh state, best of 3\n\n| shape | weights | tokens | "
        "token by token tok/s | batched tok/s | speed-up | batched ms |\n| --- | --- | --- | --- "
        "| --- | --- | --- |\n",
        prefill);
    prefill_row("default model (d 512, 4 layers, 16 experts)", models::default_model_config(),
                false, prefill);
    prefill_row("R1 layer pair", cfg, false, prefill);
    prefill_row("R1 layer pair", cfg, true, prefill);
    prefill_row("R1 layer pair, bf16 latent cache", cfg, false, prefill, true);
  }
  return 0;
}
