// tmoe/backend/cuda/gqa_model.hpp: a whole dense GQA decoder (Qwen2, Llama families) on one CUDA
// device, behind the same models::Model interface as the CPU models, so Session, the sampler and
// the tmoe program run it unchanged.
//
// Host C++ only (any C++20 compiler): it drives the GPU through the launchers of api.hpp, so the
// program also needs the one nvcc translation unit that includes api_impl.cuh.
//
// Weights come from the same loaders as the CPU models (models::WeightSource, e.g. a safetensors
// folder or models::random_weights) and are uploaded once: q/k/v as one fused (H + 2 Hkv) D x d
// matrix, gate/up as one 2I x d matrix with the gate and up rows interleaved (so each is one GEMV
// per token, and the gate/up GEMV computes SwiGLU in its epilogue), o_proj, down_proj, the
// embedding and the LM head (shared with the embedding when tied). BF16 checkpoints stay bf16 on
// the device; any other float dtype is converted to float32 (the fixtures are float32). Norm
// weights and biases are float. Activations and the KV cache are float32, like the CPU model, so
// the two agree up to summation order.
//
// One forward runs T tokens in chunks of at most ModelOptions::chunk positions:
//   h = embed(tokens); per layer: x = rmsnorm(h) (fused with h += previous ffn output);
//   qkv = x Wqkv^T; bias + RoPE + KV-cache store (one kernel); attention (flash decoding over the
//   cache, positions read on the device); r = attn Wo^T; h += r, x = rmsnorm(h); a = silu(x Wg^T)
//   * (x Wu^T) (one GEMV); r = a Wdown^T; then h += r, final norm and LM head on the rows whose
//   logits are asked for. Projections of one token are GEMVs; of several tokens cuBLAS GEMMs (float
//   weights: Sgemm in full fp32; bf16 weights: bf16 activations, fp32 accumulation) unless
//   ModelOptions::prefill_gemm is false (then one GEMV per token).
// A one-token step is captured once per state as a CUDA graph and replayed (the token and its
// position live in device memory), and generate_greedy() runs a whole greedy continuation on the
// device: each replay ends with an argmax that writes the next token and advances the position.
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
#include "tmoe/core/error.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/layers/rope.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/models/weights.hpp"

namespace tmoe::cuda {

struct ModelOptions {
  std::size_t max_context = 4096;  // cache size limit (<= max_position_embeddings)
  std::size_t chunk = 256;         // positions per forward chunk (activation buffers)
  bool prefill_gemm = true;        // several tokens: cuBLAS GEMM (false: one GEMV per token)
  bool graphs = true;              // one-token steps through a captured CUDA graph
  // One-token steps: q/k/v epilogue and attention in one kernel (gqa_decode_attention) instead of
  // gqa_qkv_store + gqa_attention. Off: measured slower on the H100 (docs/cuda.md).
  bool fused_decode_attention = false;
  // One-token steps: each RMSNorm (with the residual add before it) runs as the prologue of the
  // GEMV that consumes it (cuda::NormedX) instead of as a kernel of its own. Off: measured slower
  // on the H100 (579-587 against 594-602 tok/s, docs/cuda.md): every block of the GEMV repeats
  // the norm's reads and two barriers before its weights stream, while under programmatic
  // dependent launch the separate norm kernel costs little.
  bool normed_gemv = false;
  // One-token steps: the q/k/v bias, RoPE and KV-cache store run in the q/k/v GEMV's epilogue
  // (cuda::gemv_qkv_rope_*; the q and k rows are uploaded in rotation-pair order, so prefill's
  // gqa_qkv_store uses the interleaved layout) instead of a gqa_qkv_store kernel. Ignored with
  // fused_decode_attention. Measured 602 against 594 tok/s at the Qwen-1.5B shape (docs/cuda.md).
  bool qkv_rope_gemv = true;
  // cuda::DeepseekModel: the latent cache in bf16 and MLA decode attention on the tensor cores
  // (mla_tc.cuh; half the cache bytes, q and the softmax weights rounded to bf16). Off by default:
  // the float cache keeps the GPU model within summation order of the CPU model (the fixture
  // tests' 1e-4 bound); on, the logits move by the bf16 bound in docs/cuda.md.
  bool mla_bf16_cache = false;
  int device = 0;
};

namespace detail {
// A device-sampled continuation, shared by GqaModel and DeepseekModel. Per state: every token by
// position (history, capacity + 1) and the draws by position (uniforms); the model's step graph
// reads the token and its position from `tok` / `pos` in device memory.
struct DeviceDraws {
  DeviceBuffer<double> uniforms;  // allocated on first use
  Graph graph;                    // one step + sample_step, captured with cfg
  SamplerConfig cfg;
};

inline bool same_sampler(const SamplerConfig& a, const SamplerConfig& b) {
  return a.temperature == b.temperature && a.top_k == b.top_k && a.top_p == b.top_p &&
         a.min_p == b.min_p && a.repetition_penalty == b.repetition_penalty &&
         a.repetition_window == b.repetition_window;
}

// The first of n draws after the logits of position p0 - 1: n uniforms from a Sampler seeded with
// cfg.seed into uniforms[p0 ..), the token into *tok and history[p0], *pos = p0; then (n > 1)
// the step + sample_step graph is captured by capture_step() if cfg changed.
template <class CaptureStep>
void begin_draws(DeviceDraws& d, std::size_t cap, std::size_t p0, std::size_t n,
                 const SamplerConfig& cfg, const float* logits, std::size_t V,
                 std::int32_t* history, std::int32_t* tok, std::int32_t* pos,
                 PinnedBuffer<std::int32_t>& staging, DeviceBuffer<std::byte>& ws,
                 const Stream& stream, CaptureStep&& capture_step) {
  Sampler rng(cfg);  // its generator gives the uniforms
  std::vector<double> u(n);
  for (double& v : u) v = rng.uniform();
  if (d.uniforms.size() == 0) d.uniforms = DeviceBuffer<double>(cap + 1);
  stream.synchronize();  // u goes away after the copy; staging may feed the last copy
  copy_to_device(d.uniforms.data() + p0, u.data(), n * sizeof(double), stream);
  if (ws.size() == 0) ws = DeviceBuffer<std::byte>(sample_workspace());
  sample(const_cast<float*>(logits), 1, V, cfg, d.uniforms.data() + p0, history, p0, tok, ws.data(),
         stream);
  copy_device(history + p0, tok, sizeof(std::int32_t), stream);
  staging[0] = static_cast<std::int32_t>(p0);
  copy_to_device(pos, staging.data(), sizeof(std::int32_t), stream);
  if (n > 1 && (!d.graph || !same_sampler(d.cfg, cfg))) {
    graph_capture_begin(stream);
    capture_step(d.uniforms.data());
    d.graph = Graph(graph_capture_end(stream));
    d.cfg = cfg;
  }
}

// Replays d.graph (each runs the newest token and draws the next into history) and hands
// history[p0 ..) to on_token, `chunk` replays per copy, until n tokens or on_token returns false.
// Returns the number of tokens handed out; *replays = the graph replays run (up to chunk - 1
// more than handed out - 1 after a stop).
inline std::size_t hand_out_draws(const DeviceDraws& d, const std::int32_t* history, std::size_t p0,
                                  std::size_t n, std::size_t chunk, const Stream& stream,
                                  const std::function<bool(std::int32_t)>& on_token,
                                  std::size_t* replays = nullptr) {
  std::vector<std::int32_t> got(n);
  std::size_t ready = 1, handed = 0;  // tokens on the device / handed to on_token
  for (bool go = true; go && handed < n;) {
    const std::size_t want = std::min(n, handed + chunk);
    for (; ready < want; ++ready) d.graph.launch(stream);
    copy_to_host(got.data() + handed, history + p0 + handed, (want - handed) * sizeof(std::int32_t),
                 stream);
    while (go && handed < want) go = on_token(got[handed++]);
  }
  if (replays) *replays = ready - 1;
  return handed;
}
}  // namespace detail

class GqaModel final : public models::Model {
 public:
  // The KV caches of one sequence (device memory) and its captured step graphs.
  class CudaState final : public models::State {
   public:
    std::size_t size() const override { return size_; }
    std::size_t capacity() const override { return cap_; }
    void truncate(std::size_t n) override {
      check(n <= size_, "cuda::GqaModel", "cannot truncate to ", n, ", holds ", size_);
      size_ = n;
    }

   private:
    friend class GqaModel;
    const GqaModel* owner_ = nullptr;
    std::size_t size_ = 0, cap_ = 0;
    DeviceBuffer<float> k_, v_;           // (L, Hkv, cap, D) each
    DeviceBuffer<std::int32_t> history_;  // every token by position
    detail::DeviceDraws draws_;           // generate_sampled's uniforms and graph
    Graph step_, greedy_;
  };

  GqaModel(const io::ModelConfig& c, std::shared_ptr<const models::WeightSource> src,
           const ModelOptions& opt = {})
      : Model(c, context_limit(c, opt)), opt_(opt) {
    const char* op = "cuda::GqaModel";
    check(c.family == io::Family::qwen2 || c.family == io::Family::llama, op, src->where(),
          ": family ", io::family_name(c.family),
          " is not supported on CUDA yet (qwen2 and llama dense GQA models are)");
    check(!c.is_moe() && !c.is_mla(), op, src->where(),
          ": MoE and MLA models are not supported on CUDA yet");
    check(c.hidden_act == "silu", op, src->where(), ": hidden_act ", c.hidden_act,
          " is not supported (silu)");
    check(!c.mlp_bias, op, src->where(), ": mlp_bias is not supported");
    for (std::size_t l = 0; l <= c.num_hidden_layers; ++l)
      check(c.norm_of_layer(l) == io::NormType::rmsnorm, op, src->where(),
            ": LayerNorm layers are not supported on CUDA (RMSNorm only)");
    d_ = c.hidden_size, H_ = c.num_attention_heads, Hkv_ = c.num_key_value_heads, D_ = c.head_dim,
    I_ = c.intermediate_size, V_ = c.vocab_size, L_ = c.num_hidden_layers;
    check(H_ > 0 && Hkv_ > 0 && H_ % Hkv_ == 0, op, src->where(), ": num_attention_heads ", H_,
          " must be a positive multiple of num_key_value_heads ", Hkv_);
    check(D_ == 64 || D_ == 128 || D_ == 256, op, src->where(), ": head_dim ", D_,
          " is not supported on CUDA (64, 128, 256)");
    check(opt.chunk >= 1 && opt.chunk <= 4096, op, "chunk: expected 1..4096, got ", opt.chunk);
    eps_ = static_cast<float>(c.norm_eps);
    scale_ = 1.0f / std::sqrt(static_cast<float>(D_));
    set_device(opt.device);

    const RopeFrequencies f = rope_frequencies(models::detail::rope_config(c, D_, false));
    attn_factor_ = f.attention_factor;
    inv_freq_ = DeviceBuffer<float>(f.inv_freq.size());
    inv_freq_.upload(f.inv_freq.data(), stream_);

    models::WeightLoader w(src);
    const models::RawTensor& probe = w.raw("model.layers.0.self_attn.o_proj.weight");
    bf16_ = probe.dtype == DType::bf16;
    const std::size_t qkv_rows = (H_ + 2 * Hkv_) * D_;
    pair_qk_ = opt.qkv_rope_gemv && !opt.fused_decode_attention && d_ % (bf16_ ? 8 : 4) == 0;
    layers_.resize(L_);
    for (std::size_t l = 0; l < L_; ++l) {
      Layer& y = layers_[l];
      const std::string p = models::detail::layer_prefix(l), a = p + "self_attn.";
      y.qkv = upload_rows(w,
                          {{a + "q_proj.weight", H_ * D_},
                           {a + "k_proj.weight", Hkv_ * D_},
                           {a + "v_proj.weight", Hkv_ * D_}},
                          d_, pair_qk_ ? (H_ + Hkv_) * D_ : 0);
      y.o = upload_rows(w, {{a + "o_proj.weight", d_}}, H_ * D_);
      y.gu = upload_interleaved(w, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", I_, d_);
      y.down = upload_rows(w, {{p + "mlp.down_proj.weight", d_}}, I_);
      const bool need_bias = c.attention_bias;
      if (need_bias || w.has(a + "q_proj.bias")) {
        std::vector<float> b(qkv_rows);
        const float* bq = w.floats(a + "q_proj.bias", H_ * D_);
        const float* bk = w.floats(a + "k_proj.bias", Hkv_ * D_);
        const float* bv = w.floats(a + "v_proj.bias", Hkv_ * D_);
        std::copy(bq, bq + H_ * D_, b.begin());
        std::copy(bk, bk + Hkv_ * D_, b.begin() + H_ * D_);
        std::copy(bv, bv + Hkv_ * D_, b.begin() + (H_ + Hkv_) * D_);
        if (pair_qk_) b = pair_order(b.data(), (H_ + Hkv_) * D_, b.size(), 1);
        y.bias = upload_floats(b.data(), b.size());
      }
      y.norm1 = upload_floats(w.floats(p + "input_layernorm.weight", d_), d_);
      y.norm2 = upload_floats(w.floats(p + "post_attention_layernorm.weight", d_), d_);
    }
    embed_ = upload_rows(w, {{"model.embed_tokens.weight", V_}}, d_);
    tied_ = c.tie_word_embeddings || !w.has("lm_head.weight");
    if (!tied_) head_ = upload_rows(w, {{"lm_head.weight", V_}}, d_);
    final_norm_ = upload_floats(w.floats("model.norm.weight", d_), d_);

    const std::size_t n = opt.chunk;
    normed_gemv_ = opt.normed_gemv && d_ % (bf16_ ? 8 : 4) == 0 && d_ <= kNormedGemvMaxIn;
    if (normed_gemv_) h2_ = DeviceBuffer<float>(d_);
    h_ = DeviceBuffer<float>(n * d_), x_ = DeviceBuffer<float>(n * d_),
    r_ = DeviceBuffer<float>(n * d_);
    qkv_ = DeviceBuffer<float>(n * qkv_rows), attn_ = DeviceBuffer<float>(n * H_ * D_);
    gu_ = DeviceBuffer<float>(n * 2 * I_), act_ = DeviceBuffer<float>(n * I_);
    if (bf16_ && opt.prefill_gemm && n > 1)
      xb_ = DeviceBuffer<bf16>(n * std::max({d_, H_ * D_, I_}));
    tok_ = DeviceBuffer<std::int32_t>(n), pos_ = DeviceBuffer<std::int32_t>(n);
    logits1_ = DeviceBuffer<float>(V_);
    argmax_ws_ = DeviceBuffer<std::byte>(argmax_workspace(1));
    staging_ = PinnedBuffer<std::int32_t>(2 * n);
    const int sms = device_info(opt.device).sm_count;
    decode_split_ = std::clamp<std::size_t>(2 * std::size_t(sms) / (Hkv_ * head_blocks()), 1, 64);
    std::size_t ws = 0;
    for (std::size_t t = 1; t <= n; ++t)
      ws = std::max(ws, gqa_attention_workspace(t, H_, D_, split_for(t)));
    workspace_ = DeviceBuffer<float>(ws);
    stream_.synchronize();
  }

  // ---- models::Model ----
  std::unique_ptr<models::State> new_state(std::size_t capacity) const override {
    check(capacity >= 1 && capacity <= max_context_, "cuda::GqaModel", "context of ", capacity,
          " tokens: expected 1..", max_context_);
    auto s = std::make_unique<CudaState>();
    s->owner_ = this;
    s->cap_ = capacity;
    s->k_ = DeviceBuffer<float>(L_ * Hkv_ * capacity * D_);
    s->v_ = DeviceBuffer<float>(L_ * Hkv_ * capacity * D_);
    s->history_ = DeviceBuffer<std::int32_t>(capacity + 1);
    return s;
  }

  void forward(ThreadPool&, models::State& state, std::span<const std::int32_t> tokens,
               MatrixView<float> logits) const override {
    CudaState& s = own(state);
    const std::size_t T = tokens.size(), R = logits.rows();
    check(T > 0, "cuda::GqaModel", "no tokens to run");
    check(R >= 1 && R <= T && logits.cols() == V_, "cuda::GqaModel", "logits is (", R, ", ",
          logits.cols(), "), expected (1..", T, ", ", V_, ")");
    const float* rows = run(s, tokens, R);
    for (std::size_t r = 0; r < R; ++r)
      copy_to_host(logits.row(r), rows + r * V_, V_ * sizeof(float), stream_);
  }

  std::vector<models::LayerExpertStats> expert_stats() const override { return {}; }
  std::size_t decode_weight_bytes() const override {
    const std::size_t e = bf16_ ? 2 : 4;
    return e * (d_ + L_ * ((H_ + 2 * Hkv_) * D_ * d_ + d_ * H_ * D_ + 3 * d_ * I_) + V_ * d_);
  }
  std::string weight_format() const override { return bf16_ ? "bf16" : "float"; }

  // ---- CUDA-only ----
  // Greedy continuation on the device: runs `prompt` (>= 1 token), then returns n tokens, each
  // the argmax of the logits before it (first index on ties), produced by replaying the state's
  // greedy graph (no host round trip per token). The state then holds prompt + n - 1 positions.
  std::vector<std::int32_t> generate_greedy(models::State& state,
                                            std::span<const std::int32_t> prompt,
                                            std::size_t n) const {
    CudaState& s = own(state);
    check(!prompt.empty(), "cuda::GqaModel", "generate_greedy needs a prompt");
    if (n == 0) return {};
    check(s.size_ + prompt.size() + n - 1 <= s.cap_, "cuda::GqaModel", "context full: ", s.size_,
          " + ", prompt.size(), " + ", n - 1, " positions exceed the capacity of ", s.cap_);
    const float* first = run(s, prompt, 1);
    const std::size_t p0 = s.size_;  // position of the first generated token
    argmax(first, 1, V_, tok_.data(), nullptr, nullptr, argmax_ws_.data(), stream_);
    copy_device(s.history_.data() + p0, tok_.data(), sizeof(std::int32_t), stream_);
    stream_.synchronize();  // the staging buffer may still feed run()'s last copy
    staging_[0] = static_cast<std::int32_t>(p0);
    copy_to_device(pos_.data(), staging_.data(), sizeof(std::int32_t), stream_);
    if (n > 1 && !s.greedy_) {
      graph_capture_begin(stream_);
      step(s, 1, 0, logits1_.data());
      argmax(logits1_.data(), 1, V_, tok_.data(), pos_.data(), s.history_.data(), argmax_ws_.data(),
             stream_);
      s.greedy_ = Graph(graph_capture_end(stream_));
    }
    for (std::size_t i = 1; i < n; ++i) s.greedy_.launch(stream_);
    std::vector<std::int32_t> out(n);
    copy_to_host(out.data(), s.history_.data() + p0, n * sizeof(std::int32_t), stream_);
    s.size_ += n - 1;
    return out;
  }

  // Sampled continuation on the device: runs `prompt` (>= 1 token), then returns n tokens, each
  // drawn from the logits before it with cfg's rules (cuda::sample_step; runtime/sampler.hpp),
  // from a second captured graph that ends with the draw (no host round trip per token). The
  // uniforms are a Sampler seeded with cfg.seed, one per token, drawn on the host first; the
  // repetition penalty sees every token of the state (earlier calls' included). Greedy configs
  // (temperature <= 0 or top_k == 1) give generate_greedy's tokens.
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

  // generate_sampled's tokens handed to on_token(id) as they come back from the device, `chunk`
  // graph replays per copy (the GPU runs ahead of the host by up to one chunk); on_token
  // returning false stops there. Returns the number of tokens handed out (m); the state then
  // holds prompt + m - 1 positions, as after generate_sampled(state, prompt, m, cfg), whose
  // tokens these are.
  std::size_t generate_sampled_stream(models::State& state, std::span<const std::int32_t> prompt,
                                      std::size_t n, const SamplerConfig& cfg,
                                      const std::function<bool(std::int32_t)>& on_token,
                                      std::size_t chunk = 16) const {
    CudaState& s = own(state);
    [[maybe_unused]] const Sampler checked(cfg);  // checks cfg as the CPU does, first
    check(!prompt.empty(), "cuda::GqaModel", "generate_sampled needs a prompt");
    check(chunk > 0, "cuda::GqaModel", "generate_sampled_stream needs chunk > 0");
    if (n == 0) return 0;
    check(s.size_ + prompt.size() + n - 1 <= s.cap_, "cuda::GqaModel", "context full: ", s.size_,
          " + ", prompt.size(), " + ", n - 1, " positions exceed the capacity of ", s.cap_);
    const float* first = run(s, prompt, 1);
    const std::size_t p0 = s.size_;  // position of the first generated token
    detail::begin_draws(s.draws_, s.cap_, p0, n, cfg, first, V_, s.history_.data(), tok_.data(),
                        pos_.data(), staging_, sample_ws_, stream_, [&](const double* u) {
                          step(s, 1, 0, logits1_.data());
                          sample_step(logits1_.data(), V_, cfg, u, s.history_.data(), pos_.data(),
                                      tok_.data(), sample_ws_.data(), stream_);
                        });
    const std::size_t handed =
        detail::hand_out_draws(s.draws_, s.history_.data(), p0, n, chunk, stream_, on_token);
    s.size_ += handed - 1;
    return handed;
  }

  // models::Model's device generation hook (runtime/session.hpp uses it for `tmoe generate`).
  bool has_device_generation() const override { return true; }
  std::size_t generate_on_device(models::State& state, std::span<const std::int32_t> prompt,
                                 std::size_t n, const SamplerConfig& cfg,
                                 const std::function<bool(std::int32_t)>& on_token) const override {
    return generate_sampled_stream(state, prompt, n, cfg, on_token);
  }

  void synchronize() const { stream_.synchronize(); }
  StreamHandle stream() const { return stream_; }
  std::size_t decode_split() const { return decode_split_; }

 private:
  struct Mat {
    DeviceBuffer<std::byte> buf;
    std::size_t rows = 0, cols = 0;
  };
  struct Layer {
    Mat qkv, o, gu, down;
    DeviceBuffer<float> bias, norm1, norm2;
  };

  static std::size_t context_limit(const io::ModelConfig& c, const ModelOptions& opt) {
    return std::max<std::size_t>(
        1, std::min(opt.max_context,
                    c.max_position_embeddings ? c.max_position_embeddings : opt.max_context));
  }

  CudaState& own(models::State& state) const {
    auto* s = dynamic_cast<CudaState*>(&state);
    check(s != nullptr && s->owner_ == this, "cuda::GqaModel", "state was made by another model");
    return *s;
  }

  std::size_t head_blocks() const { return (H_ / Hkv_ + 7) / 8; }
  std::size_t split_for(std::size_t T) const {
    return T == 1 ? decode_split_
                  : std::clamp<std::size_t>(264 / (T * Hkv_ * head_blocks()), 1, 64);
  }

  DeviceBuffer<float> upload_floats(const float* p, std::size_t n) {
    DeviceBuffer<float> b(n);
    b.upload(p, stream_);
    stream_.synchronize();  // p may be a converted copy that goes away
    return b;
  }

  // Two (rows, cols) matrices A, B as one (2 rows, cols) device matrix with rows A0, B0, A1, B1..
  // (gate/up: a warp's row pair is one SwiGLU unit, see gemv_swiglu_*).
  Mat upload_interleaved(models::WeightLoader& w, const std::string& a, const std::string& b,
                         std::size_t rows, std::size_t cols) {
    const std::size_t e = bf16_ ? sizeof(bf16) : sizeof(float), rb = cols * e;
    auto bytes = [&](const std::string& name) {
      return bf16_ ? reinterpret_cast<const std::byte*>(w.matrix<bf16>(name, rows, cols).data())
                   : reinterpret_cast<const std::byte*>(w.matrix<float>(name, rows, cols).data());
    };
    const std::byte* pa = bytes(a);
    const std::byte* pb = bytes(b);
    std::vector<std::byte> host(2 * rows * rb);
    for (std::size_t r = 0; r < rows; ++r) {
      std::memcpy(host.data() + 2 * r * rb, pa + r * rb, rb);
      std::memcpy(host.data() + (2 * r + 1) * rb, pb + r * rb, rb);
    }
    Mat m;
    m.rows = 2 * rows, m.cols = cols;
    m.buf = DeviceBuffer<std::byte>(host.size());
    copy_to_device(m.buf.data(), host.data(), host.size(), stream_);
    stream_.synchronize();
    return m;
  }

  // Rows [0, paired) of an (rows, cols) matrix regrouped head by head (D_ rows each) into
  // rotation-pair order: new row 2i + r of a head = old row i + r * D_ / 2 (half-split pairs side
  // by side); rows past `paired` unchanged.
  template <class E>
  std::vector<E> pair_order(const E* src, std::size_t paired, std::size_t rows,
                            std::size_t cols) const {
    std::vector<E> dst(src, src + rows * cols);
    for (std::size_t r = 0; r < paired; ++r) {
      const std::size_t head = r / D_, i = (r % D_) / 2, half = r % 2;
      const std::size_t from = head * D_ + i + half * (D_ / 2);
      std::copy(src + from * cols, src + (from + 1) * cols, dst.begin() + r * cols);
    }
    return dst;
  }

  // Rows of several (rows_i, cols) matrices stacked into one device matrix; the first `paired`
  // rows of the stack in rotation-pair order (pair_order).
  Mat upload_rows(models::WeightLoader& w, std::vector<std::pair<std::string, std::size_t>> parts,
                  std::size_t cols, std::size_t paired = 0) {
    Mat m;
    m.cols = cols;
    for (const auto& [name, rows] : parts) m.rows += rows;
    const std::size_t e = bf16_ ? sizeof(bf16) : sizeof(float);
    m.buf = DeviceBuffer<std::byte>(m.rows * cols * e);
    std::size_t off = 0, row = 0;
    for (const auto& [name, rows] : parts) {
      const std::size_t pr = std::min(rows, paired > row ? paired - row : 0);
      check(pr % D_ == 0, "cuda::GqaModel", "paired rows must be whole heads");
      auto upload = [&](const auto* p) {
        if (pr == 0) {
          copy_to_device(m.buf.data() + off, p, rows * cols * e, stream_);
        } else {
          const auto v = pair_order(p, pr, rows, cols);
          copy_to_device(m.buf.data() + off, v.data(), rows * cols * e, stream_);
        }
        stream_.synchronize();  // v (or a converted copy behind p) goes away
      };
      if (bf16_)
        upload(w.matrix<bf16>(name, rows, cols).data());
      else
        upload(w.matrix<float>(name, rows, cols).data());
      off += rows * cols * e;
      row += rows;
    }
    return m;
  }

  // act_ (T, I) = silu(x_ Wg^T) * (x_ Wu^T) over the interleaved gate/up matrix: one fused
  // GEMV per token when the rows allow it, else the projection then SwiGLU over (gate, up) pairs.
  void gate_up(const Mat& m, std::size_t T) const {
    const bool fused = d_ % (bf16_ ? 8 : 4) == 0;
    if (fused && (T == 1 || !opt_.prefill_gemm)) {
      for (std::size_t t = 0; t < T; ++t) {
        if (bf16_)
          gemv_swiglu_bf16(reinterpret_cast<const bf16*>(m.buf.data()), m.cols, x_.data() + t * d_,
                           act_.data() + t * I_, I_, d_, stream_);
        else
          gemv_swiglu_f32(reinterpret_cast<const float*>(m.buf.data()), m.cols, x_.data() + t * d_,
                          act_.data() + t * I_, I_, d_, stream_);
      }
      return;
    }
    proj(m, x_.data(), gu_.data(), T);
    swiglu(gu_.data(), 2, gu_.data() + 1, 2, act_.data(), 1, T * I_, 1, stream_);
  }
  // One token: act_ = SwiGLU of the gate/up projection of the normed x (one kernel).
  void gate_up(const Mat& m, const NormedX& x) const {
    if (bf16_)
      gemv_swiglu_bf16(reinterpret_cast<const bf16*>(m.buf.data()), m.cols, x, act_.data(), I_, d_,
                       stream_);
    else
      gemv_swiglu_f32(reinterpret_cast<const float*>(m.buf.data()), m.cols, x, act_.data(), I_, d_,
                      stream_);
  }
  // One token: y (m.rows) = M x, x normed inside the GEMV.
  void proj(const Mat& m, const NormedX& x, float* y) const {
    if (bf16_)
      gemv_bf16(reinterpret_cast<const bf16*>(m.buf.data()), m.cols, x, y, m.rows, m.cols, stream_);
    else
      gemv_f32(reinterpret_cast<const float*>(m.buf.data()), m.cols, x, y, m.rows, m.cols, stream_);
  }

  // y (T, m.rows) = x (T, m.cols) M^T.
  void proj(const Mat& m, const float* x, float* y, std::size_t T) const {
    if (T > 1 && opt_.prefill_gemm) {
      if (bf16_) {
        to_bf16(x, xb_.data(), T * m.cols, stream_);
        gemm_bf16(reinterpret_cast<const bf16*>(m.buf.data()), m.cols, xb_.data(), m.cols, y,
                  m.rows, T, m.rows, m.cols, stream_);
      } else {
        gemm_f32(reinterpret_cast<const float*>(m.buf.data()), m.cols, x, m.cols, y, m.rows, T,
                 m.rows, m.cols, stream_);
      }
      return;
    }
    for (std::size_t t = 0; t < T; ++t) {
      if (bf16_)
        gemv_bf16(reinterpret_cast<const bf16*>(m.buf.data()), m.cols, x + t * m.cols,
                  y + t * m.rows, m.rows, m.cols, stream_);
      else
        gemv_f32(reinterpret_cast<const float*>(m.buf.data()), m.cols, x + t * m.cols,
                 y + t * m.rows, m.rows, m.cols, stream_);
    }
  }
  // Enqueues the T tokens in tok_ at positions pos_ through every layer, then the logits of rows
  // [r0, T) into dst (T - r0 rows).
  void step(CudaState& s, std::size_t T, std::size_t r0, float* dst) const {
    const std::size_t qkv_ld = (H_ + 2 * Hkv_) * D_, cap = s.cap_, per = Hkv_ * cap * D_;
    if (bf16_)
      embedding(reinterpret_cast<const bf16*>(embed_.buf.data()), d_, tok_.data(), T, h_.data(),
                stream_);
    else
      embedding(reinterpret_cast<const float*>(embed_.buf.data()), d_, tok_.data(), T, h_.data(),
                stream_);
    const std::size_t split = split_for(T);
    // One token with normed_gemv_: every norm is the prologue of its GEMV, and the residual stream
    // alternates between h_ and h2_ (the GEMV's blocks still read the old h while one stores the
    // new). Otherwise add_rmsnorm updates h_ in place and writes x_.
    const bool normed = T == 1 && normed_gemv_;
    float* h = h_.data();
    float* h_next = h2_.data();
    auto norm_x = [&](const float* delta, const DeviceBuffer<float>& gamma) {
      const NormedX nx{h, delta, delta ? h_next : nullptr, gamma.data(), eps_};
      if (delta) std::swap(h, h_next);
      return nx;
    };
    for (std::size_t l = 0; l < L_; ++l) {
      const Layer& y = layers_[l];
      float* kc = s.k_.data() + l * per;
      float* vc = s.v_.data() + l * per;
      const float* bias = y.bias.empty() ? nullptr : y.bias.data();
      // One token with pair_qk_: the q/k/v epilogue runs inside the GEMV.
      const bool qkv_epilogue = T == 1 && pair_qk_;
      const NormedX nx = normed ? norm_x(l == 0 ? nullptr : r_.data(), y.norm1) : NormedX{};
      if (!normed)
        add_rmsnorm(l == 0 ? nullptr : r_.data(), h_.data(), y.norm1.data(), x_.data(), T, d_, eps_,
                    stream_);
      if (qkv_epilogue) {
        const QkvRope rope{bias,         kc, vc,   cap, pos_.data(), inv_freq_.data(),
                           attn_factor_, H_, Hkv_, D_};
        const NormedX* nxp = normed ? &nx : nullptr;
        if (bf16_)
          gemv_qkv_rope_bf16(reinterpret_cast<const bf16*>(y.qkv.buf.data()), y.qkv.cols, x_.data(),
                             nxp, rope, qkv_.data(), d_, stream_);
        else
          gemv_qkv_rope_f32(reinterpret_cast<const float*>(y.qkv.buf.data()), y.qkv.cols, x_.data(),
                            nxp, rope, qkv_.data(), d_, stream_);
      } else if (normed) {
        proj(y.qkv, nx, qkv_.data());
      } else {
        proj(y.qkv, x_.data(), qkv_.data(), T);
      }
      if (qkv_epilogue) {
        gqa_attention(qkv_.data(), qkv_ld, kc, vc, cap, pos_.data(), T, H_, Hkv_, D_, scale_,
                      attn_.data(), H_ * D_, split, workspace_.data(), stream_);
      } else if (T == 1 && opt_.fused_decode_attention) {
        gqa_decode_attention(qkv_.data(), bias, kc, vc, cap, pos_.data(), H_, Hkv_, D_,
                             inv_freq_.data(), attn_factor_, scale_, attn_.data(), split,
                             workspace_.data(), stream_);
      } else {
        gqa_qkv_store(qkv_.data(), qkv_ld, bias, kc, vc, cap, pos_.data(), T, H_, Hkv_, D_, D_,
                      inv_freq_.data(), attn_factor_,
                      pair_qk_ ? RopeLayout::interleaved : RopeLayout::half_split, stream_);
        gqa_attention(qkv_.data(), qkv_ld, kc, vc, cap, pos_.data(), T, H_, Hkv_, D_, scale_,
                      attn_.data(), H_ * D_, split, workspace_.data(), stream_);
      }
      proj(y.o, attn_.data(), r_.data(), T);
      if (normed) {
        gate_up(y.gu, norm_x(r_.data(), y.norm2));
      } else {
        add_rmsnorm(r_.data(), h_.data(), y.norm2.data(), x_.data(), T, d_, eps_, stream_);
        gate_up(y.gu, T);
      }
      proj(y.down, act_.data(), r_.data(), T);
    }
    const std::size_t n = T - r0;
    if (normed) {
      if (n == 1) proj(tied_ ? embed_ : head_, norm_x(r_.data(), final_norm_), dst);
      return;
    }
    add_rmsnorm(r_.data() + r0 * d_, h_.data() + r0 * d_, final_norm_.data(), x_.data() + r0 * d_,
                n, d_, eps_, stream_);
    proj(tied_ ? embed_ : head_, x_.data() + r0 * d_, dst, n);
  }

  // Runs tokens through the state; returns the device address of the logits of the last R
  // tokens (R rows, valid until the next call).
  const float* run(CudaState& s, std::span<const std::int32_t> tokens, std::size_t R) const {
    const std::size_t T = tokens.size(), C = opt_.chunk;
    check(s.size_ + T <= s.cap_, "cuda::GqaModel", "context full: ", s.size_, " + ", T,
          " tokens exceed the capacity of ", s.cap_);
    for (std::size_t i = 0; i < T; ++i)
      check(tokens[i] >= 0 && static_cast<std::size_t>(tokens[i]) < V_, "cuda::GqaModel",
            "token id ", tokens[i], " at index ", i, " is outside the vocabulary of ", V_);
    const bool gather = T > C;  // wanted rows may span chunks: collect them in logits_rows_
    if (gather && logits_rows_.size() < R * V_) logits_rows_ = DeviceBuffer<float>(R * V_);
    const float* last = nullptr;
    for (std::size_t b = 0; b < T; b += C) {
      const std::size_t n = std::min(C, T - b);
      stream_.synchronize();  // the staging buffer may still feed the previous chunk's copy
      for (std::size_t t = 0; t < n; ++t) {
        staging_[t] = tokens[b + t];
        staging_[C + t] = static_cast<std::int32_t>(s.size_ + t);
      }
      copy_to_device(tok_.data(), staging_.data(), n * sizeof(std::int32_t), stream_);
      copy_to_device(pos_.data(), staging_.data() + C, n * sizeof(std::int32_t), stream_);
      // Every token by position (the sampler's repetition penalty reads them).
      copy_device(s.history_.data() + s.size_, tok_.data(), n * sizeof(std::int32_t), stream_);
      // Rows of this chunk whose logits are wanted: global index >= T - R.
      const std::size_t first = std::max(b, T - R);
      const bool has = first < b + n;
      const std::size_t r0 = has ? first - b : n - 1;
      float* dst = nullptr;
      if (n == 1 && opt_.graphs) {
        if (!s.step_) {
          graph_capture_begin(stream_);
          step(s, 1, 0, logits1_.data());
          s.step_ = Graph(graph_capture_end(stream_));
        }
        s.step_.launch(stream_);
        dst = logits1_.data();
      } else {
        if (logits_.size() < (n - r0) * V_) logits_ = DeviceBuffer<float>((n - r0) * V_);
        dst = logits_.data();
        step(s, n, r0, dst);
      }
      s.size_ += n;
      if (gather && has)
        copy_device(logits_rows_.data() + (first - (T - R)) * V_, dst,
                    (b + n - first) * V_ * sizeof(float), stream_);
      last = dst;
    }
    return gather ? logits_rows_.data() : last;
  }

  ModelOptions opt_;
  std::size_t d_ = 0, H_ = 0, Hkv_ = 0, D_ = 0, I_ = 0, V_ = 0, L_ = 0;
  float eps_ = 1e-6f, scale_ = 1.f, attn_factor_ = 1.f;
  bool bf16_ = false, tied_ = false, normed_gemv_ = false, pair_qk_ = false;
  std::size_t decode_split_ = 1;
  Stream stream_;
  DeviceBuffer<float> inv_freq_;
  std::vector<Layer> layers_;
  Mat embed_, head_;
  DeviceBuffer<float> final_norm_;
  DeviceBuffer<float> h_, h2_, x_, r_, qkv_, attn_, gu_, act_, workspace_;
  mutable DeviceBuffer<std::byte> sample_ws_;  // cuda::sample's (allocated on first use)
  DeviceBuffer<bf16> xb_;
  DeviceBuffer<std::int32_t> tok_, pos_;
  DeviceBuffer<float> logits1_;  // a graph step's logits (its address is captured)
  DeviceBuffer<std::byte> argmax_ws_;
  mutable DeviceBuffer<float> logits_, logits_rows_;
  mutable PinnedBuffer<std::int32_t> staging_;
};

// Loads a Hugging Face folder (config.json + safetensors) onto the GPU.
inline std::unique_ptr<GqaModel> load_model(const std::string& path, const ModelOptions& opt = {}) {
  check(device_count() > opt.device, "cuda::GqaModel", "no CUDA device ", opt.device, " (",
        device_count() == 0 ? device_count_error() : "out of range", ")");
  return std::make_unique<GqaModel>(io::load_model_config(path),
                                    std::make_shared<models::SafetensorsSource>(path), opt);
}

}  // namespace tmoe::cuda
