// tmoe/runtime/session.hpp: a conversation with a model: the KV cache kept across turns, the
// generation loop (sampling, EOS ids and stop strings, streaming whole UTF-8 characters) and its
// statistics (prefill and decode tokens/s, time to first token, expert load per MoE layer).
//
// set_context(tokens) makes the cache hold exactly `tokens`: the longest prefix it already holds
// is kept and only the rest is prefilled, so a chat turn re-rendered from the whole conversation
// costs only its new tokens.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"
#include "tmoe/io/tokenizer.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/runtime/sampler.hpp"

namespace tmoe {

struct GenerateOptions {
  std::size_t max_new_tokens = 128;
  SamplerConfig sampler;
  std::vector<std::int32_t> stop_ids;     // e.g. the EOS ids
  std::vector<std::string> stop_strings;  // generation stops once the text contains one
  std::size_t prefill_chunk = 256;        // tokens per prefill forward
};

struct GenerateStats {
  std::size_t prompt_tokens = 0;  // tokens prefilled for this call (after prefix reuse)
  std::size_t reused_tokens = 0;  // tokens of the context already in the cache
  std::size_t new_tokens = 0;     // tokens generated
  double prefill_seconds = 0, decode_seconds = 0, first_token_seconds = 0;
  std::string stop_reason;  // "eos", "stop string", "length", "callback"
  std::vector<std::vector<std::size_t>> expert_tokens;  // per MoE layer: tokens per expert, summed
  std::vector<std::size_t> moe_layers;                  // the layer index of each row above
  double prefill_tok_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  double decode_tok_s() const {
    return decode_seconds > 0 && new_tokens > 1 ? (new_tokens - 1) / decode_seconds : 0;
  }
};

class Session {
 public:
  Session(const models::Model& model, ThreadPool& pool, std::size_t capacity)
      : model_(&model),
        pool_(&pool),
        state_(model.new_state(capacity)),
        logits_(std::size_t{1}, model.vocab_size()) {}

  const std::vector<std::int32_t>& tokens() const { return tokens_; }
  std::size_t capacity() const { return state_->capacity(); }
  const Matrix<float>& last_logits() const { return logits_; }

  // Makes the cache hold `ctx`, prefilling only what differs from what it holds; returns the
  // number of tokens reused. Afterwards last_logits() are those after the last token of ctx.
  std::size_t set_context(std::span<const std::int32_t> ctx, std::size_t chunk = 256) {
    check(!ctx.empty(), "session", "empty context");
    check(ctx.size() <= capacity(), "session", "context of ", ctx.size(),
          " tokens exceeds the capacity of ", capacity());
    std::size_t keep = 0;
    while (keep < tokens_.size() && keep < ctx.size() && tokens_[keep] == ctx[keep]) ++keep;
    if (keep == ctx.size()) --keep;  // recompute the last token to get its logits
    state_->truncate(keep);
    tokens_.resize(keep);
    for (std::size_t b = keep; b < ctx.size(); b += chunk) {
      const std::size_t n = std::min(chunk, ctx.size() - b);
      model_->forward(*pool_, *state_, ctx.subspan(b, n), logits_.view());
      tokens_.insert(tokens_.end(), ctx.begin() + static_cast<std::ptrdiff_t>(b),
                     ctx.begin() + static_cast<std::ptrdiff_t>(b + n));
      accumulate_experts();
    }
    return keep;
  }

  // Appends one token and runs it.
  void push(std::int32_t token) {
    check(tokens_.size() < capacity(), "session", "context full at ", capacity(), " tokens");
    model_->forward(*pool_, *state_, std::span<const std::int32_t>(&token, 1), logits_.view());
    tokens_.push_back(token);
    accumulate_experts();
  }

  // Generates after `ctx`. on_text(piece) receives whole UTF-8 characters as they complete and
  // returns false to stop. Returns the generated ids. A model with device generation
  // (Model::has_device_generation, the CUDA models) runs the last context token and draws every
  // token on the device with opt.sampler's rules (the same distribution as the host Sampler, its
  // own draws), sending back token ids instead of logits; last_logits() is then not updated.
  std::vector<std::int32_t> generate(std::span<const std::int32_t> ctx, const io::Tokenizer& tok,
                                     const GenerateOptions& opt,
                                     const std::function<bool(const std::string&)>& on_text,
                                     GenerateStats* stats = nullptr) {
    using clock = std::chrono::steady_clock;
    GenerateStats st;
    reset_experts();
    check(!ctx.empty(), "session", "empty context");
    check(ctx.size() <= capacity(), "session", "context of ", ctx.size(),
          " tokens exceeds the capacity of ", capacity());
    const bool device = model_->has_device_generation() && opt.max_new_tokens > 0;
    const auto t0 = clock::now();
    if (!device) {
      st.reused_tokens = set_context(ctx, opt.prefill_chunk);
    } else if (ctx.size() > 1) {
      st.reused_tokens = set_context(ctx.first(ctx.size() - 1), opt.prefill_chunk);
    } else {
      state_->truncate(0);
      tokens_.clear();
    }
    st.prompt_tokens = ctx.size() - st.reused_tokens;
    const auto t1 = clock::now();
    st.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
    io::StreamDecoder dec(tok, /*skip_special=*/false);
    std::vector<std::int32_t> out;
    std::string text;
    st.stop_reason = "length";
    auto t_first = t1;
    // Takes generated token `id`; false when generation stops at it.
    auto accept = [&](std::int32_t id) {
      out.push_back(id);
      if (out.size() == 1) {
        t_first = clock::now();
        st.first_token_seconds = std::chrono::duration<double>(t_first - t0).count();
      }
      if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), id) != opt.stop_ids.end()) {
        st.stop_reason = "eos";
        return false;
      }
      const std::string piece = dec.push(id);
      text += piece;
      if (!piece.empty() && on_text && !on_text(piece)) {
        st.stop_reason = "callback";
        return false;
      }
      for (const auto& s : opt.stop_strings)
        if (!s.empty() && text.find(s) != std::string::npos) {
          st.stop_reason = "stop string";
          return false;
        }
      return true;
    };
    if (device) {
      // The state holds ctx[0, size - 1); the last context token and the generated ones but the
      // last run on the device, so at most capacity() - tokens_.size() tokens fit.
      const std::size_t room = capacity() - tokens_.size();
      const std::size_t n = std::min(opt.max_new_tokens, room);
      bool stopped = false;
      try {
        model_->generate_on_device(*state_, ctx.last(1), n, opt.sampler, [&](std::int32_t id) {
          stopped = !accept(id);
          return !stopped;
        });
      } catch (...) {
        // The device ran tokens that tokens_ does not list (on_text threw, or the device
        // failed): back to what tokens_ holds, so that push / set_context stay consistent.
        state_->truncate(tokens_.size());
        throw;
      }
      tokens_.push_back(ctx.back());
      tokens_.insert(tokens_.end(), out.begin(), out.end() - 1);
      if (!stopped && n < opt.max_new_tokens) st.stop_reason = "context full";
      accumulate_experts();
    } else {
      Sampler sampler(opt.sampler);
      for (std::size_t i = 0; i < opt.max_new_tokens; ++i) {
        auto row = std::span<float>(logits_.row(0), logits_.cols());
        if (!accept(sampler.sample(row, tokens_))) break;
        if (i + 1 < opt.max_new_tokens) {
          if (tokens_.size() >= capacity()) {
            st.stop_reason = "context full";
            break;
          }
          push(out.back());
        }
      }
    }
    const std::string rest = dec.flush();
    if (!rest.empty() && on_text) on_text(rest);
    st.new_tokens = out.size();
    st.decode_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
    st.expert_tokens = expert_tokens_;
    st.moe_layers = moe_layers_;
    if (stats) *stats = st;
    return out;
  }

 private:
  void reset_experts() {
    expert_tokens_.clear();
    moe_layers_.clear();
  }
  void accumulate_experts() {
    const auto s = model_->expert_stats();
    if (expert_tokens_.size() != s.size()) {
      expert_tokens_.assign(s.size(), {});
      moe_layers_.resize(s.size());
    }
    for (std::size_t i = 0; i < s.size(); ++i) {
      auto& acc = expert_tokens_[i];
      const auto& t = s[i].stats.tokens_per_expert;
      moe_layers_[i] = s[i].layer;
      if (acc.size() != t.size()) acc.assign(t.size(), 0);
      for (std::size_t e = 0; e < t.size(); ++e) acc[e] += t[e];
    }
  }

  const models::Model* model_;
  ThreadPool* pool_;
  std::unique_ptr<models::State> state_;
  Matrix<float> logits_;  // (1, V) after the last token run
  std::vector<std::int32_t> tokens_;
  std::vector<std::vector<std::size_t>> expert_tokens_;
  std::vector<std::size_t> moe_layers_;
};

}  // namespace tmoe
