// tmoe/io/chat_template.hpp: the DeepSeek-R1 chat template (also V3 and the R1-Distill models),
// configured from tokenizer_config.json; every special token is looked up in the tokenizer.
//
// Rendering (r1-architecture.md §10.1; same structure as the Jinja template shipped in
// tokenizer_config.json):
//   {bos}{system contents joined by "\n\n"}
//   user       -> <｜User｜>{content}
//   assistant  -> <｜Assistant｜>{content after the last </think>}{eos}
//   tool       -> <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{content}<｜tool▁output▁end｜>
//   (first),
//                 \n<｜tool▁output▁begin｜>{content}<｜tool▁output▁end｜> (later); the next
//                 assistant turn starts with <｜tool▁outputs▁end｜> instead of <｜Assistant｜>
//   generation -> <｜Assistant｜><think>\n  (just <｜Assistant｜> when the template has no <think>)
// No newline or space is added around role tokens. encode() renders and tokenizes with added
// tokens matched, so the BOS and role tokens become their ids from tokenizer.json.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/core/error.hpp"
#include "tmoe/io/mmap.hpp"
#include "tmoe/io/tokenizer.hpp"

namespace tmoe::io {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool"
  std::string content;
};

class ChatTemplate {
 public:
  std::string bos = "<｜begin▁of▁sentence｜>";
  std::string eos = "<｜end▁of▁sentence｜>";
  std::string user = "<｜User｜>";
  std::string assistant = "<｜Assistant｜>";
  std::string think_open = "<think>\n";  // empty: the generation prompt ends at the assistant tag
  bool strip_reasoning = true;           // drop assistant content up to the last </think>
  static constexpr std::string_view kThinkClose = "</think>";
  static constexpr std::string_view kOutputsBegin = "<｜tool▁outputs▁begin｜>";
  static constexpr std::string_view kOutputsEnd = "<｜tool▁outputs▁end｜>";
  static constexpr std::string_view kOutputBegin = "<｜tool▁output▁begin｜>";
  static constexpr std::string_view kOutputEnd = "<｜tool▁output▁end｜>";

  // From a parsed tokenizer_config.json: bos_token / eos_token (string or {"content": ...}), and
  // the chat_template, which must be the DeepSeek style (it names <｜User｜> and <｜Assistant｜>).
  static ChatTemplate from_config(const nlohmann::json& cfg, const std::string& source) {
    ChatTemplate t;
    auto token = [&](const char* key, std::string& out) {
      if (!cfg.contains(key) || cfg[key].is_null()) return;
      const auto& v = cfg[key];
      if (v.is_string())
        out = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v["content"].is_string())
        out = v["content"].get<std::string>();
      else
        fail("chat_template", source, ": ", key, " must be a string or an object with 'content'");
    };
    check(cfg.is_object(), "chat_template", source, ": expected a JSON object");
    token("bos_token", t.bos);
    token("eos_token", t.eos);
    std::string tmpl;
    if (cfg.contains("chat_template")) {
      const auto& ct = cfg["chat_template"];
      if (ct.is_string())
        tmpl = ct.get<std::string>();
      else if (ct.is_array())  // [{"name": "default", "template": ...}, ...]
        for (const auto& e : ct)
          if (e.is_object() && e.value("name", std::string()) == "default" &&
              e.contains("template"))
            tmpl = e["template"].get<std::string>();
    }
    check(!tmpl.empty(), "chat_template", source, ": no chat_template");
    check(tmpl.find(t.user) != std::string::npos && tmpl.find(t.assistant) != std::string::npos,
          "chat_template", source, ": unsupported chat template: expected the DeepSeek style with ",
          t.user, " and ", t.assistant);
    if (tmpl.find("<think>") == std::string::npos) t.think_open.clear();
    return t;
  }

  // Reads tokenizer_config.json from a model folder (or the file itself).
  static ChatTemplate from_file(const std::string& path) {
    std::string file = path;
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
      file = (std::filesystem::path(path) / "tokenizer_config.json").string();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text_file(file));
    } catch (const nlohmann::json::exception& e) {
      fail("chat_template", file, ": not valid JSON: ", e.what());
    }
    return from_config(j, file);
  }

  std::string render(const std::vector<ChatMessage>& messages,
                     bool add_generation_prompt = true) const {
    std::string out = bos;
    bool first_sys = true;
    for (const auto& m : messages)
      if (m.role == "system") {
        if (!first_sys) out += "\n\n";
        out += m.content;
        first_sys = false;
      }
    bool in_tool = false, output_first = true;
    for (const auto& m : messages) {
      if (m.role == "system") continue;
      if (m.role == "user") {
        in_tool = false;
        out += user + m.content;
      } else if (m.role == "assistant") {
        std::string_view c = m.content;
        if (strip_reasoning)
          if (const auto p = c.rfind(kThinkClose); p != std::string_view::npos)
            c.remove_prefix(p + kThinkClose.size());
        out += in_tool ? std::string(kOutputsEnd) : assistant;
        out.append(c);
        out += eos;
        in_tool = false;
      } else if (m.role == "tool") {
        in_tool = true;
        if (output_first)
          out += std::string(kOutputsBegin) + std::string(kOutputBegin);
        else
          out += "\n" + std::string(kOutputBegin);
        out += m.content;
        out += kOutputEnd;
        output_first = false;
      } else {
        fail("chat_template", "unsupported message role '", m.role,
             "' (system, user, assistant, tool)");
      }
    }
    if (in_tool) out += kOutputsEnd;
    if (add_generation_prompt && !in_tool) out += assistant + think_open;
    return out;
  }

  // Token ids of the rendered conversation. Checks that the template's special tokens are single
  // tokens of this tokenizer (so nothing is hard-coded).
  std::vector<TokenId> encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt = true) const {
    for (const std::string* s : {&bos, &eos, &user, &assistant}) (void)tok.require_token(*s);
    return tok.encode(render(messages, add_generation_prompt));
  }

  // Stop tokens for generation: the eos token's id.
  TokenId eos_id(const Tokenizer& tok) const { return tok.require_token(eos); }
};

}  // namespace tmoe::io
