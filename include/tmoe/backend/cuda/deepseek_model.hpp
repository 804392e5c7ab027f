// tmoe/backend/cuda/deepseek_model.hpp: a whole DeepSeek-V3 / R1 (and V2 with softmax greedy
// routing) decoder on one CUDA device, behind the same models::Model interface as the CPU models
// and cuda::GqaModel, so `tmoe logits/generate --device cuda` run it.
//
// Host C++ only (any C++20 compiler): it drives the GPU through the launchers of api.hpp, so the
// program also needs the one nvcc translation unit that includes api_impl.cuh.
//
// Per token (section 4-6 of r1-architecture.md), every layer:
//   x = rmsnorm(h)                            (fused with h += the previous layer's output)
//   MLA, absorbed (mla.cuh): q = q_b(rmsnorm(q_a x)) or q_proj x; kv = kv_a x; RoPE on q_pe;
//     mla_kv_store (RMSNorm of the latent + RoPE of k_pe into the layer's latent cache at pos);
//     mla_absorb_q (W_UK), mla_attention (flash decoding over the cache), mla_absorb_out (W_UV);
//     r = o_proj(...)
//   x = rmsnorm(h += r)
//   dense layers: r = down(silu(gate x) * up x)
//   MoE layers: logits = gate x (float32 router weight); router on the device (sigmoid
//     group-limited noaux_tc with e_score_correction_bias, or softmax top-k); the top-k experts'
//     gate and up rows as two gathered GEMVs (only the chosen experts' weights are read), SwiGLU,
//     the gathered down GEMV, then r = sum_k w_k y_k + shared experts' output (moe_combine);
//     the router kernel also counts tokens per expert on the device (expert_stats()).
// then the final norm and the LM head. One token: a one-token step is captured once per state as a
// CUDA graph (token and position in device memory) and replayed. Several tokens (a prompt; unless
// ModelOptions::prefill_gemm is false) run as a batched prefill in chunks of ModelOptions::chunk:
// cuBLAS GEMMs for every projection (bf16 / FP8 weights: bf16 operands, FP8 dequantized per
// matrix), all T latents into the cache then mla_attention of the T queries with W_UK / W_UV as
// per-head batched GEMMs, the router for all T tokens, and per active expert its GEMMs over the
// rows routed to it (the routing sorted on the host: one synchronization per MoE layer).
//
// Weights come through models::WeightSource and are uploaded once, kept in their stored format:
// bf16 stays bf16, F8_E4M3 with weight_scale_inv blocks stays FP8 (block-scaled GEMVs dequantize in
// registers), other float dtypes become float32. Exceptions: the router weight is float32,
// kv_b_proj is float32 or bf16 (the absorbed attention reads its rows; FP8 kv_b is dequantized to
// float32 like the CPU model's absorbed form), and the embedding and LM head are float32 or bf16
// (R1 keeps both bf16). Norm weights,
// biases, activations and the latent cache are float32, so the model agrees with the CPU model up
// to summation order. ModelOptions::mla_bf16_cache = true keeps the latent cache in bf16 and runs
// the attention on the tensor cores (mla_tc.cuh; off by default, see docs/cuda.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tmoe/backend/cuda/api.hpp"
#include "tmoe/backend/cuda/gqa_model.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/layers/rope.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/models/weights.hpp"

namespace tmoe::cuda {

class DeepseekModel final : public models::Model {
 public:
  class CudaState final : public models::State {
   public:
    std::size_t size() const override { return size_; }
    std::size_t capacity() const override { return cap_; }
    void truncate(std::size_t n) override {
      check(n <= size_, "cuda::DeepseekModel", "cannot truncate to ", n, ", holds ", size_);
      size_ = n;
    }

   private:
    friend class DeepseekModel;
    const DeepseekModel* owner_ = nullptr;
    std::size_t size_ = 0, cap_ = 0;
    DeviceBuffer<float> cache_;           // (L, cap, R + Dr), float; or
    DeviceBuffer<bf16> cache_b_;          // the same in bf16 (ModelOptions::mla_bf16_cache)
    DeviceBuffer<std::int32_t> history_;  // every token by position (the repetition penalty's)
    detail::DeviceDraws draws_;           // generate_sampled's uniforms and graph
    Graph step_;
  };

  DeepseekModel(const io::ModelConfig& c, std::shared_ptr<const models::WeightSource> src,
                const ModelOptions& opt = {})
      : Model(c, context_limit(c, opt)), opt_(opt) {
    models::WeightLoader w(src);
    init(c, &w, src->where());
  }

  // Random weights made on the device (benchmarks at real sizes): matrices uniform in
  // +-sqrt(3 / in) (unit-variance outputs), stored bf16, or FP8-block (e4m3 values over the whole
  // range, block scales near sqrt(3 / in) / 448) when fp8; kv_b_proj and the embedding bf16, the
  // router float32; norm weights in [0.8, 1.2], the router bias in [0, 0.1]. Never zeros.
  struct RandomWeights {
    std::uint64_t seed = 1;
    bool fp8 = false;
  };
  DeepseekModel(const io::ModelConfig& c, const RandomWeights& rnd, const ModelOptions& opt = {})
      : Model(c, context_limit(c, opt)), opt_(opt), rnd_(rnd) {
    init(c, nullptr, "random weights");
  }

  // ---- models::Model ----
  std::unique_ptr<models::State> new_state(std::size_t capacity) const override {
    check(capacity >= 1 && capacity <= max_context_, "cuda::DeepseekModel", "context of ", capacity,
          " tokens: expected 1..", max_context_);
    auto s = std::make_unique<CudaState>();
    s->owner_ = this;
    s->cap_ = capacity;
    if (opt_.mla_bf16_cache)
      s->cache_b_ = DeviceBuffer<bf16>(L_ * capacity * (R_ + Dr_));
    else
      s->cache_ = DeviceBuffer<float>(L_ * capacity * (R_ + Dr_));
    s->history_ = DeviceBuffer<std::int32_t>(capacity + 1);
    return s;
  }

 private:
  // w: the checkpoint, or nullptr for random weights.
  void init(const io::ModelConfig& c, models::WeightLoader* w, const std::string& where) {
    const char* op = "cuda::DeepseekModel";
    check(c.is_mla(), op, where, ": family ", io::family_name(c.family),
          " has no MLA attention (kv_lora_rank 0); use cuda::GqaModel");
    check(c.hidden_act == "silu", op, where, ": hidden_act ", c.hidden_act,
          " is not supported (silu)");
    for (std::size_t l = 0; l <= c.num_hidden_layers; ++l)
      check(c.norm_of_layer(l) == io::NormType::rmsnorm, op, where,
            ": LayerNorm layers are not supported on CUDA (RMSNorm only)");
    d_ = c.hidden_size, H_ = c.num_attention_heads, V_ = c.vocab_size, L_ = c.num_hidden_layers;
    Dn_ = c.qk_nope_head_dim, Dr_ = c.qk_rope_head_dim, Dv_ = c.v_head_dim, R_ = c.kv_lora_rank;
    Ql_ = c.q_lora_rank, I_ = c.intermediate_size, Im_ = c.moe_intermediate_size;
    E_ = c.n_routed_experts, k_ = c.num_experts_per_tok;
    if (c.is_moe()) {
      if (c.topk_method == io::TopkMethod::noaux_tc) {
        check(c.scoring_func == io::ScoringFunc::sigmoid, op, where,
              ": noaux_tc routing needs scoring_func sigmoid");
        sigmoid_router_ = true;
      } else {
        check(c.topk_method == io::TopkMethod::greedy && c.scoring_func == io::ScoringFunc::softmax,
              op, where,
              ": routing group_limited_greedy is not supported on CUDA (noaux_tc and greedy are)");
      }
      check(E_ <= 1024 && k_ >= 1 && k_ <= 32 && c.n_group >= 1 && c.n_group <= 32, op, where,
            ": router limits: at most 1024 experts, top-k 1..32, 1..32 groups");
    }
    eps_ = static_cast<float>(c.norm_eps);
    set_device(opt_.device);

    const RopeFrequencies f =
        rope_frequencies(models::detail::rope_config(c, Dr_, c.rope.interleave));
    layout_ = c.rope.interleave ? RopeLayout::interleaved : RopeLayout::half_split;
    attn_factor_ = f.attention_factor;
    scale_ = 1.0f / std::sqrt(static_cast<float>(Dn_ + Dr_)) * f.softmax_scale_factor;
    inv_freq_ = upload_floats(f.inv_freq.data(), f.inv_freq.size());

    const std::size_t Dq = Dn_ + Dr_;
    layers_.resize(L_);
    for (std::size_t l = 0; l < L_; ++l) {
      Layer& y = layers_[l];
      const std::string p = models::detail::layer_prefix(l), a = p + "self_attn.";
      if (Ql_ > 0) {
        y.q_a = upload(w, a + "q_a_proj.weight", Ql_, d_);
        y.q_a_norm = vec(w, a + "q_a_layernorm.weight", Ql_, 0.8f, 1.2f);
        y.q_b = upload(w, a + "q_b_proj.weight", H_ * Dq, Ql_);
      } else {
        y.q = upload(w, a + "q_proj.weight", H_ * Dq, d_);
      }
      y.kv_a = upload(w, a + "kv_a_proj_with_mqa.weight", R_ + Dr_, d_);
      y.kv_a_norm = vec(w, a + "kv_a_layernorm.weight", R_, 0.8f, 1.2f);
      y.kv_b = upload(w, a + "kv_b_proj.weight", H_ * (Dn_ + Dv_), R_, /*dense=*/true);
      y.o = upload(w, a + "o_proj.weight", d_, H_ * Dv_);
      y.norm1 = vec(w, p + "input_layernorm.weight", d_, 0.8f, 1.2f);
      y.norm2 = vec(w, p + "post_attention_layernorm.weight", d_, 0.8f, 1.2f);
      const std::string m = p + "mlp.";
      y.moe = c.is_moe_layer(l);
      if (!y.moe) {
        y.gate = upload(w, m + "gate_proj.weight", I_, d_);
        y.up = upload(w, m + "up_proj.weight", I_, d_);
        y.down = upload(w, m + "down_proj.weight", d_, I_);
        continue;
      }
      y.moe_slot = moe_layers_.size();
      moe_layers_.push_back(l);
      y.router = upload(w, m + "gate.weight", E_, d_, /*dense=*/true, /*f32=*/true);
      if (sigmoid_router_)
        y.router_bias = vec(w, m + "gate.e_score_correction_bias", E_, 0.f, 0.1f);
      y.gate = upload_experts(w, m + "experts.", ".gate_proj.weight", Im_, d_);
      y.up = upload_experts(w, m + "experts.", ".up_proj.weight", Im_, d_);
      y.down = upload_experts(w, m + "experts.", ".down_proj.weight", d_, Im_);
      if (c.n_shared_experts > 0) {
        const std::size_t S = Im_ * c.n_shared_experts;
        y.sh_gate = upload(w, m + "shared_experts.gate_proj.weight", S, d_);
        y.sh_up = upload(w, m + "shared_experts.up_proj.weight", S, d_);
        y.sh_down = upload(w, m + "shared_experts.down_proj.weight", d_, S);
      }
    }
    embed_ = upload(w, "model.embed_tokens.weight", V_, d_, /*dense=*/true);
    head_ = upload(w,
                   (c.tie_word_embeddings || (w && !w->has("lm_head.weight")))
                       ? "model.embed_tokens.weight"
                       : "lm_head.weight",
                   V_, d_, /*dense=*/true);
    final_norm_ = vec(w, "model.norm.weight", d_, 0.8f, 1.2f);

    const std::size_t S = Im_ * std::max<std::size_t>(c.n_shared_experts, 1);
    const std::size_t wide = std::max({I_, S, k_ * Im_, std::size_t(1)});
    h_ = DeviceBuffer<float>(d_), x_ = DeviceBuffer<float>(d_), r_ = DeviceBuffer<float>(d_);
    cq_ = DeviceBuffer<float>(std::max<std::size_t>(Ql_, 1));
    cqn_ = DeviceBuffer<float>(std::max<std::size_t>(Ql_, 1));
    q_ = DeviceBuffer<float>(H_ * Dq), kv_ = DeviceBuffer<float>(R_ + Dr_);
    qa_ = DeviceBuffer<float>(H_ * (R_ + Dr_)), ctx_ = DeviceBuffer<float>(H_ * R_);
    if (opt_.mla_bf16_cache) qa_b_ = DeviceBuffer<bf16>(H_ * (R_ + Dr_));  // q for the tc kernel
    o_ = DeviceBuffer<float>(H_ * Dv_);
    g_ = DeviceBuffer<float>(wide), u_ = DeviceBuffer<float>(wide),
    act_ = DeviceBuffer<float>(wide);
    rlog_ = DeviceBuffer<float>(std::max<std::size_t>(E_, 1));
    ridx_ = DeviceBuffer<std::int32_t>(std::max<std::size_t>(k_, 1));
    rw_ = DeviceBuffer<float>(std::max<std::size_t>(k_, 1));
    ye_ = DeviceBuffer<float>(std::max<std::size_t>(k_, 1) * d_), sh_ = DeviceBuffer<float>(d_);
    tok_ = DeviceBuffer<std::int32_t>(1), pos_ = DeviceBuffer<std::int32_t>(1);
    logits1_ = DeviceBuffer<float>(V_);
    staging_ = PinnedBuffer<std::int32_t>(2);
    expert_counts_ = DeviceBuffer<std::uint32_t>(std::max<std::size_t>(moe_layers_.size() * E_, 1));
    fill_bytes(expert_counts_.data(), 0, expert_counts_.size() * sizeof(std::uint32_t), stream_);
    const int sms = device_info(opt_.device).sm_count;
    if (opt_.mla_bf16_cache)
      check(R_ % 64 == 0 && R_ <= 512 && Dr_ % 16 == 0 && R_ + Dr_ <= 576, "cuda::DeepseekModel",
            where,
            ": mla_bf16_cache needs kv_lora_rank a multiple of 64 (<= 512) and "
            "qk_rope_head_dim a multiple of 16 with their sum <= 576, got ",
            R_, " and ", Dr_);
    // Head blocks of the attention kernel: 16 heads (float cache); 64 when H > 32, else 16 (bf16).
    const std::size_t head_blocks =
        opt_.mla_bf16_cache && H_ > 32 ? (H_ + 63) / 64 : (H_ + 15) / 16;
    split_ = std::clamp<std::size_t>(std::size_t(sms) / head_blocks, 1, 256);
    workspace_ = DeviceBuffer<float>(mla_attention_workspace(1, H_, R_, split_));
    n_group_ = c.n_group, topk_group_ = c.topk_group, norm_topk_ = c.norm_topk_prob;
    routed_scale_ = static_cast<float>(c.routed_scaling_factor);
    sms_ = std::size_t(sms), head_blocks_ = head_blocks;
    check(opt_.chunk >= 1 && opt_.chunk <= 4096, op, "chunk: expected 1..4096, got ", opt_.chunk);
    prefill_ = opt_.prefill_gemm && opt_.chunk > 1;
    if (prefill_) init_prefill(S);
    stream_.synchronize();
  }

  // The batched prefill's buffers for chunks of up to C = opt_.chunk tokens.
  void init_prefill(std::size_t S) {
    const std::size_t C = opt_.chunk, K = R_ + Dr_, Dq = Dn_ + Dr_,
                      N = C * std::max<std::size_t>(k_, 1);
    P& p = p_;
    p.h = DeviceBuffer<float>(C * d_), p.x = DeviceBuffer<float>(C * d_),
    p.r = DeviceBuffer<float>(C * d_);
    if (Ql_ > 0) p.cq = DeviceBuffer<float>(C * Ql_), p.cqn = DeviceBuffer<float>(C * Ql_);
    p.q = DeviceBuffer<float>(C * H_ * Dq), p.kv = DeviceBuffer<float>(C * K);
    p.qa = DeviceBuffer<float>(C * H_ * K), p.ctx = DeviceBuffer<float>(C * H_ * R_);
    p.o = DeviceBuffer<float>(C * H_ * Dv_);
    const std::size_t wide = std::max({C * I_, C * S, E_ ? N * Im_ : 0});
    p.g = DeviceBuffer<float>(wide), p.u = DeviceBuffer<float>(wide),
    p.act = DeviceBuffer<float>(wide);
    std::size_t xb = std::max({C * d_, C * Ql_, C * H_ * Dq, C * H_ * R_, C * H_ * Dv_, wide});
    if (E_) {
      p.rlog = DeviceBuffer<float>(C * E_), p.rw = DeviceBuffer<float>(N);
      p.ridx = DeviceBuffer<std::int32_t>(N), p.rs = DeviceBuffer<std::int32_t>(2 * N);
      p.xs = DeviceBuffer<float>(N * d_), p.ys = DeviceBuffer<float>(N * d_),
      p.ye = DeviceBuffer<float>(N * d_), p.sh = DeviceBuffer<float>(C * d_);
      p.route = PinnedBuffer<std::int32_t>(3 * N);
      xb = std::max(xb, N * d_);
    }
    p.xb = DeviceBuffer<bf16>(xb);
    if (max_fp8_elems_) p.wdq = DeviceBuffer<bf16>(max_fp8_elems_);
    p.tok = DeviceBuffer<std::int32_t>(C), p.pos = DeviceBuffer<std::int32_t>(C);
    p.stage = PinnedBuffer<std::int32_t>(2 * C);
    std::size_t ws = 0;
    for (std::size_t t = 1; t <= C; ++t)
      ws = std::max(ws, mla_attention_workspace(t, H_, R_, prefill_split(t)));
    p.ws = DeviceBuffer<float>(std::max<std::size_t>(ws, 1));
  }
  // Attention slices for a T-token chunk: enough blocks for about two waves over the SMs.
  std::size_t prefill_split(std::size_t T) const {
    return std::clamp<std::size_t>(2 * sms_ / (head_blocks_ * T), 1, split_);
  }

 public:
  void forward(ThreadPool&, models::State& state, std::span<const std::int32_t> tokens,
               MatrixView<float> logits) const override {
    CudaState& s = own(state);
    const std::size_t T = tokens.size(), R = logits.rows();
    const char* op = "cuda::DeepseekModel";
    check(T > 0, op, "no tokens to run");
    check(R >= 1 && R <= T && logits.cols() == V_, op, "logits is (", R, ", ", logits.cols(),
          "), expected (1..", T, ", ", V_, ")");
    check(s.size_ + T <= s.cap_, op, "context full: ", s.size_, " + ", T,
          " tokens exceed the capacity of ", s.cap_);
    for (std::size_t i = 0; i < T; ++i)
      check(tokens[i] >= 0 && static_cast<std::size_t>(tokens[i]) < V_, op, "token id ", tokens[i],
            " at index ", i, " is outside the vocabulary of ", V_);
    reset_expert_counts(T);
    if (T > 1 && prefill_) {
      const float* rows = prefill(s, tokens, R);
      for (std::size_t r = 0; r < R; ++r)
        copy_to_host(logits.row(r), rows + r * V_, V_ * sizeof(float), stream_);
      return;
    }
    for (std::size_t t = 0; t < T; ++t) {
      run_one(s, tokens[t]);
      if (t >= T - R)
        copy_to_host(logits.row(t - (T - R)), logits1_.data(), V_ * sizeof(float), stream_);
    }
  }

  // Tokens per routed expert of every MoE layer over the last forward() or device generation
  // (every step run: prompt, generated tokens and up to one chunk run ahead of a stop), counted
  // by the router kernels on the device; copied back here (a stream synchronization).
  std::vector<models::LayerExpertStats> expert_stats() const override {
    std::vector<std::uint32_t> c(moe_layers_.size() * E_);
    if (!c.empty()) copy_to_host(c.data(), expert_counts_.data(), c.size() * sizeof(c[0]), stream_);
    std::vector<models::LayerExpertStats> out;
    for (std::size_t i = 0; i < moe_layers_.size(); ++i) {
      MoeStats st;
      st.tokens = counted_tokens_;
      st.tokens_per_expert.assign(c.begin() + std::ptrdiff_t(i * E_),
                                  c.begin() + std::ptrdiff_t((i + 1) * E_));
      std::size_t mx = 0;
      for (std::size_t n : st.tokens_per_expert) st.active_experts += n > 0, mx = std::max(mx, n);
      const double mean = double(st.tokens * k_) / double(E_);
      st.max_over_mean = mean > 0 ? double(mx) / mean : 0.0;
      out.push_back({moe_layers_[i], std::move(st)});
    }
    return out;
  }
  std::size_t decode_weight_bytes() const override { return decode_bytes_; }
  std::string weight_format() const override { return format_; }

  // ---- CUDA-only ----
  // One decode step for `token` at the state's next position (through the state's graph); the
  // logits stay on the device (logits_device()). For benchmarks.
  void decode(models::State& state, std::int32_t token) const { run_one(own(state), token); }

  // Sampled continuation on the device, as cuda::GqaModel::generate_sampled_stream: runs `prompt`
  // (>= 1 token, one graph step each), then draws up to n tokens with cfg's rules
  // (cuda::sample_step after each step in a second captured graph; uniforms from a Sampler seeded
  // with cfg.seed; the repetition penalty sees every token of the state), handing them to
  // on_token `chunk` at a time; on_token returning false stops. Returns the number of tokens
  // handed out (m); the state then holds prompt + m - 1 positions. Greedy configs (temperature
  // <= 0 or top_k == 1) give the argmax of each step's logits (first index on ties).
  std::size_t generate_sampled_stream(models::State& state, std::span<const std::int32_t> prompt,
                                      std::size_t n, const SamplerConfig& cfg,
                                      const std::function<bool(std::int32_t)>& on_token,
                                      std::size_t chunk = 16) const {
    CudaState& s = own(state);
    const char* op = "cuda::DeepseekModel";
    [[maybe_unused]] const Sampler checked(cfg);  // checks cfg as the CPU does, first
    check(!prompt.empty(), op, "generate_sampled needs a prompt");
    check(chunk > 0, op, "generate_sampled_stream needs chunk > 0");
    if (n == 0) return 0;
    check(s.size_ + prompt.size() + n - 1 <= s.cap_, op, "context full: ", s.size_, " + ",
          prompt.size(), " + ", n - 1, " positions exceed the capacity of ", s.cap_);
    for (std::size_t i = 0; i < prompt.size(); ++i)
      check(prompt[i] >= 0 && static_cast<std::size_t>(prompt[i]) < V_, op, "token id ", prompt[i],
            " at index ", i, " is outside the vocabulary of ", V_);
    reset_expert_counts(prompt.size());
    if (prompt.size() > 1 && prefill_) {  // the prompt as a batched prefill; its last logits
      const float* last = prefill(s, prompt, 1);  // where the first draw reads them
      copy_device(logits1_.data(), last, V_ * sizeof(float), stream_);
    } else {
      for (std::int32_t t : prompt) run_one(s, t);
    }
    const std::size_t p0 = s.size_;  // position of the first generated token
    detail::begin_draws(s.draws_, s.cap_, p0, n, cfg, logits1_.data(), V_, s.history_.data(),
                        tok_.data(), pos_.data(), staging_, sample_ws_, stream_,
                        [&](const double* u) {
                          step(s);
                          sample_step(logits1_.data(), V_, cfg, u, s.history_.data(), pos_.data(),
                                      tok_.data(), sample_ws_.data(), stream_);
                        });
    std::size_t replays = 0;
    const std::size_t handed = detail::hand_out_draws(s.draws_, s.history_.data(), p0, n, chunk,
                                                      stream_, on_token, &replays);
    counted_tokens_ += replays;
    s.size_ += handed - 1;
    return handed;
  }
  std::vector<std::int32_t> generate_sampled(models::State& state,
                                             std::span<const std::int32_t> prompt, std::size_t n,
                                             const SamplerConfig& cfg) const {
    std::vector<std::int32_t> out;
    out.reserve(n);
    generate_sampled_stream(
        state, prompt, n, cfg,
        [&](std::int32_t id) {
          out.push_back(id);
          return true;
        },
        n);
    return out;
  }

  // models::Model's device generation hook (runtime/session.hpp uses it for `tmoe generate`).
  bool has_device_generation() const override { return true; }
  std::size_t generate_on_device(models::State& state, std::span<const std::int32_t> prompt,
                                 std::size_t n, const SamplerConfig& cfg,
                                 const std::function<bool(std::int32_t)>& on_token) const override {
    return generate_sampled_stream(state, prompt, n, cfg, on_token);
  }
  const float* logits_device() const { return logits1_.data(); }
  void synchronize() const { stream_.synchronize(); }
  StreamHandle stream() const { return stream_; }
  std::size_t attention_split() const { return split_; }

 private:
  enum class Fmt : std::uint8_t { f32, bf16, fp8 };
  struct Mat {
    Fmt fmt = Fmt::f32;
    DeviceBuffer<std::byte> buf;
    DeviceBuffer<float> scale;  // fp8: (E,) ceil(rows / 128) x ceil(cols / 128) per matrix
    std::size_t rows = 0, cols = 0, count = 0;  // count: stacked experts (0: one matrix)
    std::size_t elems() const { return rows * cols; }
    std::size_t scale_elems() const { return ((rows + 127) / 128) * ((cols + 127) / 128); }
  };
  struct Layer {
    Mat q_a, q_b, q, kv_a, kv_b, o;
    DeviceBuffer<float> q_a_norm, kv_a_norm, norm1, norm2, router_bias;
    bool moe = false;
    std::size_t moe_slot = 0;                             // this layer's row of expert_counts_
    Mat gate, up, down, router, sh_gate, sh_up, sh_down;  // experts stacked when moe
  };

  static std::size_t context_limit(const io::ModelConfig& c, const ModelOptions& opt) {
    return std::max<std::size_t>(
        1, std::min(opt.max_context,
                    c.max_position_embeddings ? c.max_position_embeddings : opt.max_context));
  }

  CudaState& own(models::State& state) const {
    auto* s = dynamic_cast<CudaState*>(&state);
    check(s != nullptr && s->owner_ == this, "cuda::DeepseekModel",
          "state was made by another model");
    return *s;
  }

  DeviceBuffer<float> upload_floats(const float* p, std::size_t n) {
    DeviceBuffer<float> b(n);
    b.upload(p, stream_);
    stream_.synchronize();
    return b;
  }

  static std::size_t elt(Fmt f) { return f == Fmt::f32 ? 4 : f == Fmt::bf16 ? 2 : 1; }
  // The device format of matrix `name`: as stored (FP8 kept unless dense rows are needed, other
  // non-bf16 dtypes as float32); random weights: bf16, or FP8 when asked and not dense.
  Fmt stored(models::WeightLoader* w, const std::string& name, bool dense, bool f32) const {
    if (f32) return Fmt::f32;
    if (!w) return rnd_.fp8 && !dense ? Fmt::fp8 : Fmt::bf16;
    const DType t = w->raw(name).dtype;
    if (t == DType::bf16) return Fmt::bf16;
    if (t == DType::f8_e4m3 && !dense) return Fmt::fp8;
    return Fmt::f32;
  }
  // Bytes of (rows, cols) tensor `name` in format f (fp8: raw bytes + scales appended to sc).
  static const std::byte* host_bytes(models::WeightLoader& w, const std::string& name,
                                     std::size_t rows, std::size_t cols, Fmt f,
                                     std::vector<float>* sc) {
    if (f == Fmt::fp8) {
      const models::RawTensor& t = w.raw(name);
      check(t.shape == std::vector<std::size_t>{rows, cols}, "cuda::DeepseekModel", name,
            ": expected (", rows, ", ", cols, ")");
      const std::vector<float> s = w.read_floats(name + "_scale_inv");
      sc->insert(sc->end(), s.begin(), s.end());
      return t.data;
    }
    if (f == Fmt::bf16)
      return reinterpret_cast<const std::byte*>(w.matrix<bf16>(name, rows, cols).data());
    return reinterpret_cast<const std::byte*>(w.matrix<float>(name, rows, cols).data());
  }
  // A float vector: from the checkpoint, or uniform in [lo, hi) for random weights.
  DeviceBuffer<float> vec(models::WeightLoader* w, const std::string& name, std::size_t n, float lo,
                          float hi) {
    if (w) return upload_floats(w->floats(name, n), n);
    DeviceBuffer<float> b(n);
    fill_uniform(b.data(), n, rnd_.seed * 1000003u + seed_++, lo, hi, stream_);
    return b;
  }
  // Random contents of m (count matrices of rows x cols).
  void randomize(Mat& m, std::size_t count) {
    const std::size_t n = count * m.elems();
    const float a = std::sqrt(3.0f / static_cast<float>(m.cols));
    const std::uint64_t seed = rnd_.seed * 1000003u + seed_++;
    switch (m.fmt) {
      case Fmt::f32:
        fill_uniform(reinterpret_cast<float*>(m.buf.data()), n, seed, -a, a, stream_);
        break;
      case Fmt::bf16:
        fill_uniform(reinterpret_cast<bf16*>(m.buf.data()), n, seed, -a, a, stream_);
        break;
      case Fmt::fp8:
        fill_uniform(reinterpret_cast<f8_e4m3*>(m.buf.data()), n, seed, -448.f, 448.f, stream_);
        m.scale = DeviceBuffer<float>(count * m.scale_elems());
        fill_uniform(m.scale.data(), m.scale.size(), seed + 1, 0.9f * a / 448.f, 1.1f * a / 448.f,
                     stream_);
        break;
    }
  }
  void note(const Mat& m, std::size_t count_read) {
    decode_bytes_ +=
        count_read * (m.elems() * elt(m.fmt) + m.scale_elems() * 4 * (m.fmt == Fmt::fp8));
    if (m.fmt == Fmt::fp8 || (m.fmt == Fmt::bf16 && format_ != "fp8_block"))
      format_ = m.fmt == Fmt::fp8 ? "fp8_block" : "bf16";
  }
  Mat upload(models::WeightLoader* w, const std::string& name, std::size_t rows, std::size_t cols,
             bool dense = false, bool f32 = false) {
    Mat m;
    m.fmt = stored(w, name, dense, f32);
    m.rows = rows, m.cols = cols;
    m.buf = DeviceBuffer<std::byte>(m.elems() * elt(m.fmt));
    if (!w) {
      randomize(m, 1);
    } else {
      std::vector<float> sc;
      const std::byte* p = host_bytes(*w, name, rows, cols, m.fmt, &sc);
      copy_to_device(m.buf.data(), p, m.buf.size(), stream_);
      if (m.fmt == Fmt::fp8) {
        m.scale = DeviceBuffer<float>(sc.size());
        m.scale.upload(sc.data(), stream_);
      }
    }
    stream_.synchronize();
    note(m, name.find("embed_tokens") != std::string::npos ? 0 : 1);
    if (m.fmt == Fmt::fp8) max_fp8_elems_ = std::max(max_fp8_elems_, m.elems());
    return m;
  }
  Mat upload_experts(models::WeightLoader* w, const std::string& p, const std::string& suffix,
                     std::size_t rows, std::size_t cols) {
    Mat m;
    m.fmt = stored(w, p + "0" + suffix, false, false);
    m.rows = rows, m.cols = cols, m.count = E_;
    const std::size_t bytes = m.elems() * elt(m.fmt);
    m.buf = DeviceBuffer<std::byte>(E_ * bytes);
    if (!w) {
      randomize(m, E_);
    } else {
      std::vector<float> sc;
      for (std::size_t e = 0; e < E_; ++e) {
        const std::string name = p + std::to_string(e) + suffix;
        check(stored(w, name, false, false) == m.fmt, "cuda::DeepseekModel", name,
              ": experts of one layer must share a dtype");
        const std::byte* b = host_bytes(*w, name, rows, cols, m.fmt, &sc);
        copy_to_device(m.buf.data() + e * bytes, b, bytes, stream_);
        stream_.synchronize();  // b may be a converted copy
      }
      if (m.fmt == Fmt::fp8) {
        m.scale = DeviceBuffer<float>(sc.size());
        m.scale.upload(sc.data(), stream_);
      }
    }
    stream_.synchronize();
    note(m, k_);
    if (m.fmt == Fmt::fp8) max_fp8_elems_ = std::max(max_fp8_elems_, m.elems());
    return m;
  }

  // y = M x (float activations).
  void gemv(const Mat& m, const float* x, float* y) const {
    switch (m.fmt) {
      case Fmt::f32:
        gemv_f32(reinterpret_cast<const float*>(m.buf.data()), m.cols, x, y, m.rows, m.cols,
                 stream_);
        break;
      case Fmt::bf16:
        gemv_bf16(reinterpret_cast<const bf16*>(m.buf.data()), m.cols, x, y, m.rows, m.cols,
                  stream_);
        break;
      case Fmt::fp8:
        gemv_fp8_block(reinterpret_cast<const f8_e4m3*>(m.buf.data()), m.cols, m.scale.data(), x, y,
                       m.rows, m.cols, stream_);
        break;
    }
  }
  // y[b] = M_{idx[b]} x_b for b < k (x_stride 0: one x).
  void gemv_gather(const Mat& m, const std::int32_t* idx, std::size_t k, const float* x,
                   std::size_t x_stride, float* y) const {
    switch (m.fmt) {
      case Fmt::f32:
        gemv_f32_gather(reinterpret_cast<const float*>(m.buf.data()), m.cols, m.elems(), idx, k, x,
                        x_stride, y, m.rows, m.cols, stream_);
        break;
      case Fmt::bf16:
        gemv_bf16_gather(reinterpret_cast<const bf16*>(m.buf.data()), m.cols, m.elems(), idx, k, x,
                         x_stride, y, m.rows, m.cols, stream_);
        break;
      case Fmt::fp8:
        gemv_fp8_block_gather(reinterpret_cast<const f8_e4m3*>(m.buf.data()), m.cols, m.elems(),
                              m.scale.data(), m.scale_elems(), idx, k, x, x_stride, y, m.rows,
                              m.cols, stream_);
        break;
    }
  }
  // act (rows) = silu(gate x) * up x.
  void swiglu_mlp(const Mat& gate, const Mat& up, const Mat& down, const float* x,
                  float* out) const {
    gemv(gate, x, g_.data());
    gemv(up, x, u_.data());
    swiglu(g_.data(), 1, u_.data(), 1, act_.data(), 1, gate.rows, 1, stream_);
    gemv(down, act_.data(), out);
  }

  // Enqueues one token (tok_ at pos_) through every layer; logits into logits1_.
  void step(CudaState& s) const {
    const std::size_t K = R_ + Dr_, Dq = Dn_ + Dr_;
    if (embed_.fmt == Fmt::bf16)
      embedding(reinterpret_cast<const bf16*>(embed_.buf.data()), d_, tok_.data(), 1, h_.data(),
                stream_);
    else
      embedding(reinterpret_cast<const float*>(embed_.buf.data()), d_, tok_.data(), 1, h_.data(),
                stream_);
    for (std::size_t l = 0; l < L_; ++l) {
      const Layer& y = layers_[l];
      float* cache = opt_.mla_bf16_cache ? nullptr : s.cache_.data() + l * s.cap_ * K;
      bf16* cache_b = opt_.mla_bf16_cache ? s.cache_b_.data() + l * s.cap_ * K : nullptr;
      add_rmsnorm(l == 0 ? nullptr : r_.data(), h_.data(), y.norm1.data(), x_.data(), 1, d_, eps_,
                  stream_);
      if (Ql_ > 0) {
        gemv(y.q_a, x_.data(), cq_.data());
        add_rmsnorm(static_cast<const float*>(nullptr), cq_.data(), y.q_a_norm.data(), cqn_.data(),
                    1, Ql_, eps_, stream_);
        gemv(y.q_b, cqn_.data(), q_.data());
      } else {
        gemv(y.q, x_.data(), q_.data());
      }
      gemv(y.kv_a, x_.data(), kv_.data());
      rope(q_.data(), 1, H_, H_ * Dq, Dq, Dn_, Dr_, pos_.data(), inv_freq_.data(), attn_factor_,
           layout_, stream_);
      if (cache_b)
        mla_kv_store(kv_.data(), K, y.kv_a_norm.data(), eps_, 1, R_, Dr_, pos_.data(),
                     inv_freq_.data(), attn_factor_, layout_, cache_b, stream_);
      else
        mla_kv_store(kv_.data(), K, y.kv_a_norm.data(), eps_, 1, R_, Dr_, pos_.data(),
                     inv_freq_.data(), attn_factor_, layout_, cache, stream_);
      auto attend = [&](const auto* kvb) {
        if (cache_b) {  // q absorbed straight into bf16: half the bytes for every slice's block
          mla_absorb_q(kvb, q_.data(), H_ * Dq, qa_b_.data(), 1, H_, Dn_, Dr_, Dv_, R_, stream_);
          mla_attention(qa_b_.data(), cache_b, pos_.data(), 1, H_, R_, Dr_, scale_, ctx_.data(),
                        split_, workspace_.data(), stream_);
        } else {
          mla_absorb_q(kvb, q_.data(), H_ * Dq, qa_.data(), 1, H_, Dn_, Dr_, Dv_, R_, stream_);
          mla_attention(qa_.data(), cache, pos_.data(), 1, H_, R_, Dr_, scale_, ctx_.data(), split_,
                        workspace_.data(), stream_);
        }
        mla_absorb_out(kvb, ctx_.data(), o_.data(), H_ * Dv_, 1, H_, Dn_, Dv_, R_, stream_);
      };
      if (y.kv_b.fmt == Fmt::bf16)
        attend(reinterpret_cast<const bf16*>(y.kv_b.buf.data()));
      else
        attend(reinterpret_cast<const float*>(y.kv_b.buf.data()));
      gemv(y.o, o_.data(), r_.data());
      add_rmsnorm(r_.data(), h_.data(), y.norm2.data(), x_.data(), 1, d_, eps_, stream_);
      if (!y.moe) {
        swiglu_mlp(y.gate, y.up, y.down, x_.data(), r_.data());
        continue;
      }
      gemv(y.router, x_.data(), rlog_.data());
      std::uint32_t* counts = expert_counts_.data() + y.moe_slot * E_;
      if (sigmoid_router_)
        router_sigmoid_grouped_topk(rlog_.data(), y.router_bias.data(), ridx_.data(), rw_.data(), 1,
                                    E_, n_group_, topk_group_, k_, norm_topk_, routed_scale_,
                                    stream_, counts);
      else
        router_softmax_topk(rlog_.data(), ridx_.data(), rw_.data(), 1, E_, k_, norm_topk_,
                            routed_scale_, stream_, counts);
      gemv_gather(y.gate, ridx_.data(), k_, x_.data(), 0, g_.data());
      gemv_gather(y.up, ridx_.data(), k_, x_.data(), 0, u_.data());
      swiglu(g_.data(), 1, u_.data(), 1, act_.data(), 1, k_ * Im_, 1, stream_);
      gemv_gather(y.down, ridx_.data(), k_, act_.data(), Im_, ye_.data());
      const bool shared = y.sh_gate.rows > 0;
      if (shared) swiglu_mlp(y.sh_gate, y.sh_up, y.sh_down, x_.data(), sh_.data());
      moe_combine(ye_.data(), rw_.data(), k_, shared ? sh_.data() : nullptr, r_.data(), d_, 1,
                  stream_);
    }
    add_rmsnorm(r_.data(), h_.data(), final_norm_.data(), x_.data(), 1, d_, eps_, stream_);
    gemv(head_, x_.data(), logits1_.data());
  }

  // ---- batched prefill ----
  // y (T, m.rows) = x (T, m.cols) M_e^T (expert e of a stacked matrix; 0 otherwise) on cuBLAS:
  // float weights: Sgemm in fp32 on x; bf16: the bf16 GEMM on xb (x rounded to bf16 by the
  // caller, or here when xb is null); FP8: M_e dequantized to bf16 first (p_.wdq).
  void pgemm(const Mat& m, std::size_t e, const float* x, const bf16* xb, float* y,
             std::size_t T) const {
    if (T == 0) return;
    const std::size_t n = m.elems();
    if (m.fmt == Fmt::f32) {
      gemm_f32(reinterpret_cast<const float*>(m.buf.data()) + e * n, m.cols, x, m.cols, y, m.rows,
               T, m.rows, m.cols, stream_);
      return;
    }
    if (!xb) {
      to_bf16(x, p_.xb.data(), T * m.cols, stream_);
      xb = p_.xb.data();
    }
    const bf16* w = reinterpret_cast<const bf16*>(m.buf.data()) + e * n;
    if (m.fmt == Fmt::fp8) {
      dequant_fp8_block(reinterpret_cast<const f8_e4m3*>(m.buf.data()) + e * n, m.cols,
                        m.scale.data() + e * m.scale_elems(), p_.wdq.data(), m.rows, m.cols,
                        stream_);
      w = p_.wdq.data();
    }
    gemm_bf16(w, m.cols, xb, m.cols, y, m.rows, T, m.rows, m.cols, stream_);
  }
  // out (T, d) = down(silu(gate x) * up x) for x (T, d).
  void pmlp(const Mat& gate, const Mat& up, const Mat& down, const float* x, float* out,
            std::size_t T) const {
    const bool same = gate.fmt != Fmt::f32 && up.fmt != Fmt::f32;
    if (same) to_bf16(x, p_.xb.data(), T * d_, stream_);
    pgemm(gate, 0, x, same ? p_.xb.data() : nullptr, p_.g.data(), T);
    pgemm(up, 0, x, same ? p_.xb.data() : nullptr, p_.u.data(), T);
    swiglu(p_.g.data(), 1, p_.u.data(), 1, p_.act.data(), 1, T * gate.rows, 1, stream_);
    pgemm(down, 0, p_.act.data(), nullptr, out, T);
  }
  // Routed experts of T tokens: the router's choices come back to the host (one synchronization),
  // which sorts the T k (token, expert) pairs by expert; the rows of x are gathered in that order,
  // every active expert runs its gate / up / down GEMMs over its own rows only (the others'
  // weights are not read), and the outputs are gathered back to (T, k, d) for moe_combine.
  void prouted(const Layer& y, std::size_t T) const {
    const std::size_t N = T * k_;
    std::int32_t* h = p_.route.data();  // [idx (N) | rows (N) | slot (N)]
    copy_to_host(h, p_.ridx.data(), N * sizeof(std::int32_t), stream_);
    seg_.assign(E_ + 1, 0);
    for (std::size_t i = 0; i < N; ++i) {
      check(h[i] >= 0 && std::size_t(h[i]) < E_, "cuda::DeepseekModel", "router chose expert ",
            h[i], " of ", E_);
      ++seg_[std::size_t(h[i]) + 1];
    }
    for (std::size_t e = 0; e < E_; ++e) seg_[e + 1] += seg_[e];
    fill_.assign(seg_.begin(), seg_.end() - 1);
    for (std::size_t i = 0; i < N; ++i) {  // i = t k + b, in token order within each expert
      const std::size_t at = fill_[std::size_t(h[i])]++;
      h[N + at] = static_cast<std::int32_t>(i / k_);
      h[2 * N + i] = static_cast<std::int32_t>(at);
    }
    copy_to_device(p_.rs.data(), h + N, 2 * N * sizeof(std::int32_t), stream_);  // rows, slot
    embedding(p_.x.data(), d_, p_.rs.data(), N, p_.xs.data(), stream_);          // gathered x rows
    const bool b16 = y.gate.fmt != Fmt::f32;
    if (b16) to_bf16(p_.xs.data(), p_.xb.data(), N * d_, stream_);
    for (std::size_t e = 0; e < E_; ++e) {
      const std::size_t o = seg_[e], n = seg_[e + 1] - o;
      if (n == 0) continue;
      pgemm(y.gate, e, p_.xs.data() + o * d_, b16 ? p_.xb.data() + o * d_ : nullptr,
            p_.g.data() + o * Im_, n);
      pgemm(y.up, e, p_.xs.data() + o * d_, b16 ? p_.xb.data() + o * d_ : nullptr,
            p_.u.data() + o * Im_, n);
    }
    swiglu(p_.g.data(), 1, p_.u.data(), 1, p_.act.data(), 1, N * Im_, 1, stream_);
    if (y.down.fmt != Fmt::f32) to_bf16(p_.act.data(), p_.xb.data(), N * Im_, stream_);
    for (std::size_t e = 0; e < E_; ++e) {
      const std::size_t o = seg_[e], n = seg_[e + 1] - o;
      if (n == 0) continue;
      pgemm(y.down, e, p_.act.data() + o * Im_,
            y.down.fmt != Fmt::f32 ? p_.xb.data() + o * Im_ : nullptr, p_.ys.data() + o * d_, n);
    }
    embedding(p_.ys.data(), d_, p_.rs.data() + N, N, p_.ye.data(), stream_);  // to (T, k, d)
  }
  // MLA for the T tokens of the chunk (p_.tok at p_.pos): latents into the cache, then the
  // absorbed attention of all T queries (causal through their positions) with W_UK / W_UV as
  // per-head batched GEMMs; o (T, H Dv) into p_.o.
  void pattention(const Layer& y, CudaState& s, std::size_t l, std::size_t T) const {
    const std::size_t K = R_ + Dr_, Dq = Dn_ + Dr_, HB = (Dn_ + Dv_) * R_;
    float* cache = opt_.mla_bf16_cache ? nullptr : s.cache_.data() + l * s.cap_ * K;
    bf16* cache_b = opt_.mla_bf16_cache ? s.cache_b_.data() + l * s.cap_ * K : nullptr;
    if (Ql_ > 0) {
      pgemm(y.q_a, 0, p_.x.data(), nullptr, p_.cq.data(), T);
      add_rmsnorm(static_cast<const float*>(nullptr), p_.cq.data(), y.q_a_norm.data(),
                  p_.cqn.data(), T, Ql_, eps_, stream_);
      pgemm(y.q_b, 0, p_.cqn.data(), nullptr, p_.q.data(), T);
    } else {
      pgemm(y.q, 0, p_.x.data(), nullptr, p_.q.data(), T);
    }
    pgemm(y.kv_a, 0, p_.x.data(), nullptr, p_.kv.data(), T);
    rope(p_.q.data(), T, H_, H_ * Dq, Dq, Dn_, Dr_, p_.pos.data(), inv_freq_.data(), attn_factor_,
         layout_, stream_);
    if (cache_b)
      mla_kv_store(p_.kv.data(), K, y.kv_a_norm.data(), eps_, T, R_, Dr_, p_.pos.data(),
                   inv_freq_.data(), attn_factor_, layout_, cache_b, stream_);
    else
      mla_kv_store(p_.kv.data(), K, y.kv_a_norm.data(), eps_, T, R_, Dr_, p_.pos.data(),
                   inv_freq_.data(), attn_factor_, layout_, cache, stream_);
    // qa[t, h] = [q_nope[t, h] W_UK[h] | q_pe[t, h]]: W_UK[h] (Dn, R) is used as stored (w_t).
    if (y.kv_b.fmt == Fmt::bf16) {
      to_bf16(p_.q.data(), p_.xb.data(), T * H_ * Dq, stream_);
      gemm_batched_bf16(reinterpret_cast<const bf16*>(y.kv_b.buf.data()), R_, HB, true,
                        p_.xb.data(), H_ * Dq, Dq, p_.qa.data(), H_ * K, K, T, R_, Dn_, H_,
                        stream_);
    } else {
      gemm_batched_f32(reinterpret_cast<const float*>(y.kv_b.buf.data()), R_, HB, true, p_.q.data(),
                       H_ * Dq, Dq, p_.qa.data(), H_ * K, K, T, R_, Dn_, H_, stream_);
    }
    copy_device_2d(p_.qa.data() + R_, K * sizeof(float), p_.q.data() + Dn_, Dq * sizeof(float),
                   Dr_ * sizeof(float), T * H_, stream_);
    const std::size_t split = prefill_split(T);
    if (cache_b)
      mla_attention(p_.qa.data(), cache_b, p_.pos.data(), T, H_, R_, Dr_, scale_, p_.ctx.data(),
                    split, p_.ws.data(), stream_);
    else
      mla_attention(p_.qa.data(), cache, p_.pos.data(), T, H_, R_, Dr_, scale_, p_.ctx.data(),
                    split, p_.ws.data(), stream_);
    // o[t, h] = ctx[t, h] W_UV[h]^T, W_UV[h] = kv_b rows [h (Dn + Dv) + Dn, + Dv).
    if (y.kv_b.fmt == Fmt::bf16) {
      to_bf16(p_.ctx.data(), p_.xb.data(), T * H_ * R_, stream_);
      gemm_batched_bf16(reinterpret_cast<const bf16*>(y.kv_b.buf.data()) + Dn_ * R_, R_, HB, false,
                        p_.xb.data(), H_ * R_, R_, p_.o.data(), H_ * Dv_, Dv_, T, Dv_, R_, H_,
                        stream_);
    } else {
      gemm_batched_f32(reinterpret_cast<const float*>(y.kv_b.buf.data()) + Dn_ * R_, R_, HB, false,
                       p_.ctx.data(), H_ * R_, R_, p_.o.data(), H_ * Dv_, Dv_, T, Dv_, R_, H_,
                       stream_);
    }
  }
  // Enqueues the T tokens in p_.tok (positions p_.pos) through every layer, then the logits of
  // rows [r0, T) into dst (T - r0 rows).
  void pstep(CudaState& s, std::size_t T, std::size_t r0, float* dst) const {
    if (embed_.fmt == Fmt::bf16)
      embedding(reinterpret_cast<const bf16*>(embed_.buf.data()), d_, p_.tok.data(), T, p_.h.data(),
                stream_);
    else
      embedding(reinterpret_cast<const float*>(embed_.buf.data()), d_, p_.tok.data(), T,
                p_.h.data(), stream_);
    for (std::size_t l = 0; l < L_; ++l) {
      const Layer& y = layers_[l];
      add_rmsnorm(l == 0 ? nullptr : p_.r.data(), p_.h.data(), y.norm1.data(), p_.x.data(), T, d_,
                  eps_, stream_);
      pattention(y, s, l, T);
      pgemm(y.o, 0, p_.o.data(), nullptr, p_.r.data(), T);
      add_rmsnorm(p_.r.data(), p_.h.data(), y.norm2.data(), p_.x.data(), T, d_, eps_, stream_);
      if (!y.moe) {
        pmlp(y.gate, y.up, y.down, p_.x.data(), p_.r.data(), T);
        continue;
      }
      pgemm(y.router, 0, p_.x.data(), nullptr, p_.rlog.data(), T);
      std::uint32_t* counts = expert_counts_.data() + y.moe_slot * E_;
      if (sigmoid_router_)
        router_sigmoid_grouped_topk(p_.rlog.data(), y.router_bias.data(), p_.ridx.data(),
                                    p_.rw.data(), T, E_, n_group_, topk_group_, k_, norm_topk_,
                                    routed_scale_, stream_, counts);
      else
        router_softmax_topk(p_.rlog.data(), p_.ridx.data(), p_.rw.data(), T, E_, k_, norm_topk_,
                            routed_scale_, stream_, counts);
      prouted(y, T);
      const bool shared = y.sh_gate.rows > 0;
      if (shared) pmlp(y.sh_gate, y.sh_up, y.sh_down, p_.x.data(), p_.sh.data(), T);
      moe_combine(p_.ye.data(), p_.rw.data(), k_, shared ? p_.sh.data() : nullptr, p_.r.data(), d_,
                  T, stream_);
    }
    const std::size_t n = T - r0;
    add_rmsnorm(p_.r.data() + r0 * d_, p_.h.data() + r0 * d_, final_norm_.data(),
                p_.x.data() + r0 * d_, n, d_, eps_, stream_);
    pgemm(head_, 0, p_.x.data() + r0 * d_, nullptr, dst, n);
  }
  // Runs tokens (checked by the caller) through the state in chunks of opt_.chunk positions;
  // returns the device address of the logits of the last R tokens (R rows, valid until the next
  // call).
  const float* prefill(CudaState& s, std::span<const std::int32_t> tokens, std::size_t R) const {
    const std::size_t T = tokens.size(), C = opt_.chunk;
    const bool gather = T > C;  // wanted rows may span chunks: collect them in p_.logits_rows
    if (gather && p_.logits_rows.size() < R * V_) p_.logits_rows = DeviceBuffer<float>(R * V_);
    const float* last = nullptr;
    for (std::size_t b = 0; b < T; b += C) {
      const std::size_t n = std::min(C, T - b);
      stream_.synchronize();  // the staging buffer may still feed the previous chunk's copy
      for (std::size_t t = 0; t < n; ++t) {
        p_.stage[t] = tokens[b + t];
        p_.stage[C + t] = static_cast<std::int32_t>(s.size_ + t);
      }
      copy_to_device(p_.tok.data(), p_.stage.data(), n * sizeof(std::int32_t), stream_);
      copy_to_device(p_.pos.data(), p_.stage.data() + C, n * sizeof(std::int32_t), stream_);
      copy_device(s.history_.data() + s.size_, p_.tok.data(), n * sizeof(std::int32_t), stream_);
      const std::size_t first = std::max(b, T - R);  // rows wanted: global index >= T - R
      const bool has = first < b + n;
      const std::size_t r0 = has ? first - b : n - 1;
      if (p_.logits.size() < (n - r0) * V_) p_.logits = DeviceBuffer<float>((n - r0) * V_);
      pstep(s, n, r0, p_.logits.data());
      s.size_ += n;
      if (gather && has)
        copy_device(p_.logits_rows.data() + (first - (T - R)) * V_, p_.logits.data(),
                    (b + n - first) * V_ * sizeof(float), stream_);
      last = p_.logits.data();
    }
    return gather ? p_.logits_rows.data() : last;
  }

  void reset_expert_counts(std::size_t tokens) const {
    fill_bytes(expert_counts_.data(), 0, expert_counts_.size() * sizeof(std::uint32_t), stream_);
    counted_tokens_ = tokens;
  }

  void run_one(CudaState& s, std::int32_t token) const {
    check(s.size_ < s.cap_, "cuda::DeepseekModel", "context full: capacity ", s.cap_);
    stream_.synchronize();  // the staging buffer may still feed the previous copy
    staging_[0] = token;
    staging_[1] = static_cast<std::int32_t>(s.size_);
    copy_to_device(tok_.data(), staging_.data(), sizeof(std::int32_t), stream_);
    copy_to_device(pos_.data(), staging_.data() + 1, sizeof(std::int32_t), stream_);
    copy_to_device(s.history_.data() + s.size_, staging_.data(), sizeof(std::int32_t), stream_);
    if (opt_.graphs) {
      if (!s.step_) {
        graph_capture_begin(stream_);
        step(s);
        s.step_ = Graph(graph_capture_end(stream_));
      }
      s.step_.launch(stream_);
    } else {
      step(s);
    }
    s.size_ += 1;
  }

  ModelOptions opt_;
  RandomWeights rnd_{};
  std::uint64_t seed_ = 0;  // random weights: one stream per tensor
  std::size_t d_ = 0, H_ = 0, V_ = 0, L_ = 0, Dn_ = 0, Dr_ = 0, Dv_ = 0, R_ = 0, Ql_ = 0, I_ = 0,
              Im_ = 0, E_ = 0, k_ = 0, n_group_ = 1, topk_group_ = 1;
  float eps_ = 1e-6f, scale_ = 1.f, attn_factor_ = 1.f, routed_scale_ = 1.f;
  bool sigmoid_router_ = false, norm_topk_ = false;
  RopeLayout layout_ = RopeLayout::interleaved;
  std::size_t split_ = 1, decode_bytes_ = 0;
  std::string format_ = "float";  // fp8_block if any matrix is, else bf16 if any is
  Stream stream_;
  DeviceBuffer<float> inv_freq_;
  std::vector<Layer> layers_;
  Mat embed_, head_;
  DeviceBuffer<float> final_norm_;
  DeviceBuffer<float> h_, x_, r_, cq_, cqn_, q_, kv_, qa_, ctx_, o_, rlog_, rw_, ye_, sh_,
      workspace_;
  DeviceBuffer<bf16> qa_b_;  // decode's absorbed q in bf16 (ModelOptions::mla_bf16_cache)
  mutable DeviceBuffer<float> g_, u_, act_;
  DeviceBuffer<std::int32_t> ridx_, tok_, pos_;
  DeviceBuffer<float> logits1_;
  mutable PinnedBuffer<std::int32_t> staging_;
  mutable DeviceBuffer<std::byte> sample_ws_;          // cuda::sample's (allocated on first use)
  std::vector<std::size_t> moe_layers_;                // the layer index of each MoE layer
  mutable DeviceBuffer<std::uint32_t> expert_counts_;  // (MoE layers, E): the routers' counts
  mutable std::size_t counted_tokens_ = 0;             // steps the counts cover
  // The batched prefill (ModelOptions::prefill_gemm): buffers for chunks of up to opt_.chunk
  // tokens (C); N = C k routed (token, expert) pairs.
  struct P {
    DeviceBuffer<float> h, x, r, cq, cqn, q, kv, qa, ctx, o, g, u, act, rlog, rw, xs, ys, ye, sh,
        ws;
    DeviceBuffer<bf16> xb;                          // bf16 GEMM operands (activations)
    DeviceBuffer<bf16> wdq;                         // an FP8-block matrix dequantized for its GEMM
    DeviceBuffer<std::int32_t> tok, pos, ridx, rs;  // rs: [rows (N) | slot (N)], one upload
    PinnedBuffer<std::int32_t> stage, route;
    DeviceBuffer<float> logits, logits_rows;
  };
  bool prefill_ = false;
  std::size_t sms_ = 1, head_blocks_ = 1, max_fp8_elems_ = 0;
  mutable P p_;
  mutable std::vector<std::size_t> seg_, fill_;  // prouted's expert segments
};

// Loads a Hugging Face folder onto the GPU: DeepseekModel for MLA configs, GqaModel otherwise.
inline std::unique_ptr<models::Model> load_any_model(const std::string& path,
                                                     const ModelOptions& opt = {}) {
  check(device_count() > opt.device, "cuda::load_model", "no CUDA device ", opt.device, " (",
        device_count() == 0 ? device_count_error() : "out of range", ")");
  const io::ModelConfig c = io::load_model_config(path);
  auto src = std::make_shared<models::SafetensorsSource>(path);
  if (c.is_mla()) return std::make_unique<DeepseekModel>(c, src, opt);
  return std::make_unique<GqaModel>(c, src, opt);
}

}  // namespace tmoe::cuda
