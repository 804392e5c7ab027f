// examples/tmoe/model_path.hpp: what --model names (a Hugging Face folder or a .gguf file),
// checked once with a clear error, and its tokenizer / chat template.
#pragma once

#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include <unistd.h>
#include <nlohmann/json.hpp>

#include "tmoe/core/error.hpp"
#include "tmoe/io/chat_template.hpp"
#include "tmoe/io/gguf.hpp"
#include "tmoe/io/tokenizer.hpp"
#include "tmoe/models/model.hpp"

namespace tmoe::cli {

// A Hugging Face folder (config.json + safetensors) or a .gguf file (its header is checked when
// it is opened); throws naming the path.
inline void check_model_path(const std::string& path, const char* op) {
  std::error_code ec;
  check(std::filesystem::exists(path, ec), op, "model path '", path, "' does not exist");
  if (std::filesystem::is_directory(path, ec)) {
    check(std::filesystem::exists(std::filesystem::path(path) / "config.json", ec), op,
          "model folder '", path, "' has no config.json");
    return;
  }
  if (path.ends_with(".gguf") && std::filesystem::is_regular_file(path, ec)) return;
  fail(op, "model path '", path, "' is neither a model folder nor a .gguf file");
}

// The tokenizer of a model folder (tokenizer.json) or a .gguf file (tokenizer.ggml.*).
inline io::Tokenizer model_tokenizer(const std::string& path) {
  if (models::is_gguf_path(path)) return io::gguf_tokenizer(io::GgufFile(path)).tokenizer;
  return io::Tokenizer::from_file(path);
}

// The chat template of a model folder (tokenizer_config.json) or a .gguf file
// (tokenizer.chat_template with the bos / eos token texts).
inline io::ChatTemplate model_chat_template(const std::string& path) {
  if (!models::is_gguf_path(path)) return io::ChatTemplate::from_file(path);
  io::GgufFile g(path);
  nlohmann::json j;
  if (g.find("tokenizer.chat_template"))
    j["chat_template"] = g.get_string("tokenizer.chat_template");
  const auto& toks = g.get_array("tokenizer.ggml.tokens", io::GgufType::string);
  for (auto [key, name] : {std::pair{"tokenizer.ggml.bos_token_id", "bos_token"},
                           {"tokenizer.ggml.eos_token_id", "eos_token"}})
    if (auto id = g.get_uint_opt(key); id && *id < toks.size()) j[name] = toks[*id].s;
  return io::ChatTemplate::from_config(j, path);
}

// --weights q8_0|q4_0|q4_k|q6_k: quantize the matrices at load (unset: as stored).
template <class A>
std::optional<quant::QuantType> weights_option(const A& args, const char* op) {
  if (!args.has("--weights")) return std::nullopt;
  const std::string w = args.str("--weights");
  if (w == "q8_0") return quant::QuantType::q8_0;
  if (w == "q4_0") return quant::QuantType::q4_0;
  if (w == "q4_k") return quant::QuantType::q4_k;
  if (w == "q6_k") return quant::QuantType::q6_k;
  fail(op, "--weights '", w, "' is not one of q8_0, q4_0, q4_k, q6_k");
}

// A load progress bar on stderr, drawn only when stderr is a terminal (nothing in pipes or
// files): "[tmoe] loading weights [#####     ] 12/24 layers", erased when done.
inline std::function<void(std::size_t, std::size_t)> load_progress_bar() {
  if (!::isatty(::fileno(stderr))) return {};
  return [](std::size_t done, std::size_t total) {
    constexpr int kWidth = 30;
    const int fill = total ? static_cast<int>(kWidth * done / total) : kWidth;
    std::fprintf(stderr, "\r[tmoe] loading weights [%.*s%*s] %zu/%zu layers", fill,
                 "##############################", kWidth - fill, "", done, total);
    if (done == total) std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  };
}

}  // namespace tmoe::cli
