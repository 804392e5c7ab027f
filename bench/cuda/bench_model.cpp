// bench_cuda_model: decode and prefill speed of cuda::GqaModel at a real model's shape with random
// bf16 weights (default: DeepSeek-R1-Distill-Qwen-1.5B: hidden 1536, 28 layers, 12 / 2 heads of
// 128, MLP 8960, vocab 151936, q/k/v bias, untied LM head). A plain program (like
// bench_cuda_gemv): it times with host clocks around synchronized device work, after warm-up.
//
//   bench_cuda_model [--layers N] [--prompt P] [--new N] [--long P2] [--normed-gemv 0|1]
//   [--qkv-rope-gemv 0|1]
//
// Reports: greedy decode through the captured graph (generate_greedy: argmax on the device, one
// graph replay per token), decode through forward() (logits downloaded, host argmax: what
// `tmoe generate` does), and prefill (cuBLAS GEMM) tok/s; plus the weight bytes one token reads
// and the bandwidth that implies.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tmoe/backend/cuda/gqa_model.hpp"
#include "tmoe/models/random_init.hpp"

using namespace tmoe;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

io::ModelConfig r1_distill_qwen_1p5b(std::size_t layers) {
  io::ModelConfig c;
  c.family = io::Family::qwen2;
  c.model_type = "qwen2";
  c.vocab_size = 151936;
  c.hidden_size = 1536;
  c.num_hidden_layers = layers;
  c.intermediate_size = 8960;
  c.num_attention_heads = 12;
  c.num_key_value_heads = 2;
  c.head_dim = 128;
  c.max_position_embeddings = 131072;
  c.norm_eps = 1e-6;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.rope.theta = 10000.0;
  return c;
}

// models::random_weights' distribution (uniform +-sqrt(3/in) matrices, norms in [0.8, 1.2],
// biases in [0, 0.1]), filled by all cores: a 1.8 B-parameter model in seconds.
std::shared_ptr<models::MemoryWeights> random_bf16(const io::ModelConfig& c, std::uint64_t seed) {
  auto w = std::make_shared<models::MemoryWeights>("random bf16 weights");
  const auto specs = models::tensor_specs(c);
  const unsigned nt = std::max(1u, std::thread::hardware_concurrency());
  for (std::size_t k = 0; k < specs.size(); ++k) {
    const auto& t = specs[k];
    std::size_t n = 1;
    for (auto x : t.shape) n *= x;
    const bool mat = t.role == models::TensorRole::matrix;
    const float a = mat ? std::sqrt(3.0f / float(t.shape[1])) : 0.f;
    std::vector<bf16> vb(mat ? n : 0);
    std::vector<float> vf(mat ? 0 : n);
    std::vector<std::thread> th;
    for (unsigned i = 0; i < nt; ++i)
      th.emplace_back([&, i] {
        models::SplitMix64 rng(seed * 0x2545f4914f6cdd1dull + k * 1024 + i);
        for (std::size_t j = n * i / nt; j < n * (i + 1) / nt; ++j) {
          if (mat)
            vb[j] = bf16::from_float(rng.uniform(-a, a));
          else
            vf[j] = t.role == models::TensorRole::norm ? rng.uniform(0.8f, 1.2f)
                                                       : rng.uniform(0.f, 0.1f);
        }
      });
    for (auto& x : th) x.join();
    if (mat)
      w->add<bf16>(t.name, t.shape, std::move(vb));
    else
      w->add<float>(t.name, t.shape, std::move(vf));
  }
  return w;
}

std::size_t arg(int argc, char** argv, const char* name, std::size_t def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::strtoull(argv[i + 1], nullptr, 10);
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::size_t layers = arg(argc, argv, "--layers", 28), P = arg(argc, argv, "--prompt", 32),
                      N = arg(argc, argv, "--new", 256), P2 = arg(argc, argv, "--long", 1024);
    const io::ModelConfig cfg = r1_distill_qwen_1p5b(layers);
    const cuda::DeviceInfo dev = cuda::device_info(0);
    std::printf("device: %s, %d SMs\n", dev.name, dev.sm_count);
    double t0 = now();
    auto weights = random_bf16(cfg, 1);
    std::printf("random bf16 weights: %.1f s\n", now() - t0);
    cuda::ModelOptions opt;
    opt.max_context = P2 + N + 8;
    opt.normed_gemv = arg(argc, argv, "--normed-gemv", 0) != 0;  // for A/B runs (docs/cuda.md)
    opt.qkv_rope_gemv = arg(argc, argv, "--qkv-rope-gemv", 1) != 0;
    t0 = now();
    cuda::GqaModel m(cfg, weights, opt);
    weights.reset();
    std::printf(
        "upload: %.1f s; %s weights, %.1f MB read per decoded token, decode split %zu, norms %s, "
        "q/k/v epilogue %s\n",
        now() - t0, m.weight_format().c_str(), m.decode_weight_bytes() / 1e6, m.decode_split(),
        opt.normed_gemv ? "inside the GEMVs" : "as kernels",
        opt.qkv_rope_gemv ? "in the GEMV" : "a kernel");

    std::vector<std::int32_t> prompt(std::max(P, P2));
    for (std::size_t i = 0; i < prompt.size(); ++i)
      prompt[i] = std::int32_t((i * 7919 + 13) % cfg.vocab_size);
    ThreadPool pool(1);

    // Warm-up (graph capture, cuBLAS handles, clocks).
    {
      auto st = m.new_state(P + N + 1);
      m.generate_greedy(*st, std::span(prompt.data(), P), N);
    }
    struct Row {
      std::string what;
      double tok_s;
    };
    std::vector<Row> rows;
    auto decode_graph = [&](std::size_t ctx) {
      auto st = m.new_state(ctx + N + 1);
      Matrix<float> lg(1, cfg.vocab_size);
      m.forward(pool, *st, std::span<const std::int32_t>(prompt.data(), ctx - 1), lg.view());
      m.synchronize();
      const double t = now();
      const auto out = m.generate_greedy(*st, std::span(prompt.data() + ctx - 1, 1), N);
      const double dt = now() - t;
      rows.push_back({"decode, graph + device argmax, context " + std::to_string(ctx) + ".." +
                          std::to_string(ctx + N),
                      N / dt});
      return out;
    };
    decode_graph(P);
    decode_graph(P2);
    {  // Sampling on the device: R1's recommended temperature 0.6 and top-p 0.95.
      SamplerConfig sc;
      sc.temperature = 0.6f, sc.top_p = 0.95f, sc.seed = 1;
      auto st = m.new_state(P + N + 1);
      Matrix<float> lg(1, cfg.vocab_size);
      m.forward(pool, *st, std::span<const std::int32_t>(prompt.data(), P - 1), lg.view());
      m.generate_sampled(*st, std::span(prompt.data() + P - 1, 1), 2, sc);  // capture
      st = m.new_state(P + N + 1);
      m.forward(pool, *st, std::span<const std::int32_t>(prompt.data(), P - 1), lg.view());
      m.synchronize();
      const double t = now();
      m.generate_sampled(*st, std::span(prompt.data() + P - 1, 1), N, sc);
      rows.push_back({"decode, graph + device sampling (T 0.6, top-p 0.95), context " +
                          std::to_string(P) + ".." + std::to_string(P + N),
                      N / (now() - t)});
    }
    {
      auto st = m.new_state(P + N + 1);
      Matrix<float> lg(1, cfg.vocab_size);
      m.forward(pool, *st, std::span<const std::int32_t>(prompt.data(), P), lg.view());
      const std::size_t n = std::min<std::size_t>(N, 128);
      const double t = now();
      for (std::size_t i = 0; i < n; ++i) {
        std::int32_t best = 0;
        for (std::size_t v = 1; v < cfg.vocab_size; ++v)
          if (lg(0, v) > lg(0, std::size_t(best))) best = std::int32_t(v);
        m.forward(pool, *st, std::span<const std::int32_t>(&best, 1), lg.view());
      }
      rows.push_back({"decode, forward() + host logits + host argmax, context " +
                          std::to_string(P) + ".." + std::to_string(P + n),
                      n / (now() - t)});
    }
    for (std::size_t len : {P, P2}) {
      auto st = m.new_state(len);
      Matrix<float> lg(1, cfg.vocab_size);
      m.forward(pool, *st, std::span<const std::int32_t>(prompt.data(), len), lg.view());  // warm
      st = m.new_state(len);
      const double t = now();
      m.forward(pool, *st, std::span<const std::int32_t>(prompt.data(), len), lg.view());
      rows.push_back(
          {"prefill " + std::to_string(len) + " tokens (cuBLAS bf16 GEMM)", len / (now() - t)});
    }
    std::printf("\n| tmoe cuda::GqaModel, %zu layers | tok/s | ms/token | weight GB/s |\n", layers);
    std::printf("| --- | --- | --- | --- |\n");
    for (const auto& r : rows)
      std::printf("| %s | %.1f | %.3f | %.0f |\n", r.what.c_str(), r.tok_s, 1e3 / r.tok_s,
                  r.what.starts_with("decode") ? m.decode_weight_bytes() * r.tok_s / 1e9 : 0.0);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_model: %s\n", e.what());
    return 1;
  }
}
