// libFuzzer target for the tokenizer: (1) the input as a tokenizer.json (only tmoe::Error may
// escape); (2) the input as text for a small fixed tokenizer with DeepSeek-V3's split patterns and
// added tokens: invalid UTF-8 must be refused with tmoe::Error, valid text must round-trip through
// decode, the streaming decoder must reproduce it, and NFC must be idempotent on it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "tmoe/io/tokenizer.hpp"

namespace {
const tmoe::io::Tokenizer& small() {
  static const tmoe::io::Tokenizer t = [] {
    tmoe::io::TokenizerSpec s;
    s.source = "fuzz-small";
    const auto& bl = tmoe::io::ByteLevelMap::get();
    for (int b = 0; b < 256; ++b)
      s.vocab.emplace_back(bl.encode(std::string(1, static_cast<char>(b))), b);
    const char* words[][2] = {{"t", "h"},  {"th", "e"}, {"Ġ", "t"},  {"Ġ", "the"}, {"1", "2"},
                              {"12", "3"}, {"a", "n"},  {"an", "d"}, {"Ġ", "Ġ"},   {"ä", "½"}};
    tmoe::io::TokenId id = 256;
    for (auto& w : words) {
      s.vocab.emplace_back(std::string(w[0]) + w[1], id++);
      s.merges.emplace_back(w[0], w[1]);
    }
    s.added.push_back({id++, "<｜User｜>", true});
    s.added.push_back({id++, "<｜Use", false});
    s.added.push_back({id++, "<think>", false});
    for (auto p : {tmoe::io::patterns::kDeepSeekV3Digits, tmoe::io::patterns::kDeepSeekV3Cjk,
                   tmoe::io::patterns::kDeepSeekV3Words})
      s.splits.push_back({std::string(p), false});
    return tmoe::io::Tokenizer(s);
  }();
  return t;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    (void)tmoe::io::Tokenizer::from_json(text, "fuzz/tokenizer.json");
  } catch (const tmoe::Error&) {
  }
  const auto& tok = small();
  std::vector<tmoe::io::TokenId> ids;
  try {
    ids = tok.encode(text);
  } catch (const tmoe::Error&) {
    if (tmoe::io::utf8::first_invalid(text) == std::string_view::npos)
      std::abort();  // valid text refused
    return 0;
  }
  if (tok.decode(ids) != text) std::abort();
  const std::string n1 = tmoe::io::nfc::normalize(text);  // NFC is idempotent and keeps UTF-8 valid
  if (tmoe::io::utf8::first_invalid(n1) != std::string_view::npos) std::abort();
  if (tmoe::io::nfc::normalize(n1) != n1) std::abort();
  tmoe::io::StreamDecoder sd(tok);
  std::string streamed;
  for (auto id : ids) {
    const std::string piece = sd.push(id);
    if (tmoe::io::utf8::first_invalid(piece) != std::string_view::npos) std::abort();
    streamed += piece;
  }
  streamed += sd.flush();
  if (streamed != text) std::abort();
  return 0;
}
