// Tests for tmoe/io/tokenizer.hpp on the real DeepSeek-V3 and Qwen3 tokenizer.json files:
// hand-checked ids (looked up in the files' vocab), reference ids from Hugging Face `tokenizers`
// (tests/data/tokenizers/<name>/reference_ids.json, 228 texts), round trips, the streaming
// decoder, and errors for bad tokenizer files and bad text.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "io_test_util.hpp"
#include "tmoe/io/tokenizer.hpp"

using namespace tmoe;
using io::TokenId;
using tmoe::test::check_error;

namespace {

const std::string kDir = std::string(TMOE_TEST_DATA_DIR) + "/tokenizers/";

const io::Tokenizer& deepseek() {
  static const io::Tokenizer t = io::Tokenizer::from_file(kDir + "deepseek_v3/tokenizer.json");
  return t;
}
const io::Tokenizer& qwen() {
  static const io::Tokenizer t = io::Tokenizer::from_file(kDir + "qwen3");
  return t;
}

// The id of a token given by its byte-level spelling in the vocab (e.g. "Ġworld").
TokenId vid(const io::Tokenizer& t, std::string_view byte_level) {
  const auto id = t.token_id(io::ByteLevelMap::get().decode(byte_level));
  REQUIRE_MESSAGE(id.has_value(), "missing token ", byte_level);
  return *id;
}

std::vector<std::string> sample_texts() {
  return {"Hello world",
          "  leading spaces and trailing   ",
          "Numbers: 1234567 and 3.14159, 1,000,000!",
          "中文分词测试，你好世界。DeepSeek-R1 是一个推理模型。",
          "日本語のテキスト、カタカナとひらがな。",
          "Emoji 😀👍🏽 and symbols ∑∫√ — “quotes” ‘single’",
          "line one\nline two\r\n\n\ttabbed\n",
          "code: for (int i = 0; i < n; ++i) { x[i] += y[i]; }",
          "<｜User｜>Hi<｜Assistant｜>",
          "don't won't I'M we'll you'D",
          "Ünïcödé çàfé naïve résumé Ωμέγα Привет мир",
          ""};
}

}  // namespace

TEST_CASE("tokenizer: DeepSeek-V3 hand-checked ids") {
  const auto& t = deepseek();
  CHECK(t.vocab_size() >= 128815);
  CHECK(t.require_token("<｜User｜>") == 128803);
  CHECK(t.require_token("<｜Assistant｜>") == 128804);
  CHECK(t.require_token("<｜begin▁of▁sentence｜>") == 0);
  CHECK(t.require_token("<｜end▁of▁sentence｜>") == 1);
  CHECK(t.is_special(0));
  CHECK_FALSE(t.token_id("<think>")
                  .has_value());  // the V3 file has no <think> token (r1-architecture §10.1)
  CHECK(t.encode("<｜User｜>") == std::vector<TokenId>{128803});
  CHECK(t.encode("Hello world") == std::vector<TokenId>{vid(t, "Hello"), vid(t, "Ġworld")});
  // \p{N}{1,3}: digits in groups of three
  CHECK(t.encode("12345") == std::vector<TokenId>{vid(t, "123"), vid(t, "45")});
  // special tokens cut out before BPE, no space merging across them
  CHECK(t.encode("<｜User｜>Hello<｜Assistant｜>") ==
        std::vector<TokenId>{128803, vid(t, "Hello"), 128804});
  // a CJK run is one piece: "你好" is a single vocab token
  CHECK(t.encode("你好") == std::vector<TokenId>{vid(t, io::ByteLevelMap::get().encode("你好"))});
  CHECK(t.encode("").empty());
}

TEST_CASE("tokenizer: Qwen3 hand-checked ids (merges in [a, b] form)") {
  const auto& t = qwen();
  CHECK(t.require_token("<|im_start|>") == 151644);
  CHECK(t.require_token("<|endoftext|>") == 151643);
  CHECK(t.encode("Hello world") == std::vector<TokenId>{vid(t, "Hello"), vid(t, "Ġworld")});
  // Qwen splits every digit
  CHECK(t.encode("123") == std::vector<TokenId>{vid(t, "1"), vid(t, "2"), vid(t, "3")});
  CHECK(t.encode("<|im_start|>user\nHi<|im_end|>") ==
        std::vector<TokenId>{151644, vid(t, "user"), vid(t, "Ċ"), vid(t, "Hi"), 151645});
}

TEST_CASE("tokenizer: decode(encode(x)) == x; streaming never splits a character") {
  for (const io::Tokenizer* t : {&deepseek(), &qwen()}) {
    for (const auto& text : sample_texts()) {
      CAPTURE(text);
      const auto ids = t->encode(text);
      CHECK(t->decode(ids) == text);
      io::StreamDecoder sd(*t);
      std::string streamed;
      for (TokenId id : ids) {
        const std::string piece = sd.push(id);
        CHECK(io::utf8::first_invalid(piece) == std::string_view::npos);
        streamed += piece;
      }
      streamed += sd.flush();
      CHECK(streamed == text);
    }
  }
}

TEST_CASE("tokenizer: streaming decoder on split characters and invalid bytes") {
  io::TokenizerSpec spec;
  spec.source = "synthetic";
  const auto& bl = io::ByteLevelMap::get();
  for (int b = 0; b < 256; ++b) spec.vocab.emplace_back(bl.encode(std::string(1, char(b))), b);
  io::Tokenizer t(spec);
  io::StreamDecoder sd(t);
  const std::string euro = "€";  // e2 82 ac
  CHECK(sd.push(static_cast<unsigned char>(euro[0])).empty());
  CHECK(sd.push(static_cast<unsigned char>(euro[1])).empty());
  CHECK(sd.push(static_cast<unsigned char>(euro[2])) == euro);
  CHECK(sd.push(0xff) == "\xef\xbf\xbd");
  CHECK(sd.push(0xe2).empty());
  CHECK(sd.push('a') ==
        "\xef\xbf\xbd"
        "a");  // e2 cannot be continued by 'a'
  CHECK(sd.push(0xf0).empty());
  CHECK(sd.flush() == "\xef\xbf\xbd");
  CHECK(t.decode(std::vector<TokenId>{0xe2, 0x82}) == "\xef\xbf\xbd");
}

TEST_CASE("tokenizer: reference ids from Hugging Face tokenizers") {
  for (const auto& [name, tok] : std::map<std::string, const io::Tokenizer*>{
           {"deepseek_v3", &deepseek()}, {"qwen3", &qwen()}}) {
    const std::string ref = kDir + name + "/reference_ids.json";
    REQUIRE_MESSAGE(std::filesystem::exists(ref), ref, " is missing");
    const auto j = nlohmann::json::parse(io::read_text_file(ref));
    REQUIRE(j.is_array());
    REQUIRE(!j.empty());
    std::size_t mismatches = 0;
    for (const auto& e : j) {
      const std::string text = e.at("text").get<std::string>();
      const auto want = e.at("ids").get<std::vector<TokenId>>();
      const auto got = tok->encode(text);
      if (got != want && ++mismatches <= 5) {
        CAPTURE(name);
        CAPTURE(text);
        CHECK(got == want);
      }
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("tokenizer: bad files and bad text give one clear error") {
  test::TempDir dir;
  const auto path = dir.file("tokenizer.json");
  auto expect = [&](const std::string& text, std::initializer_list<std::string_view> parts) {
    test::write_text(path, text);
    check_error([&] { (void)io::Tokenizer::from_file(path); }, parts);
  };
  std::string vocab = "{";
  const auto& bl = io::ByteLevelMap::get();
  for (int b = 0; b < 256; ++b)
    vocab += (b ? "," : "") + nlohmann::json(bl.encode(std::string(1, char(b)))).dump() + ":" +
             std::to_string(b);
  vocab += R"(,"ab":256})";
  const std::string ok = R"({"model":{"type":"BPE","vocab":)" + vocab + R"(,"merges":["a b"]}})";
  test::write_text(path, ok);
  const auto t = io::Tokenizer::from_file(path);
  CHECK(t.encode("ab") == std::vector<TokenId>{256});
  CHECK(t.encode("ba") == std::vector<TokenId>{'b', 'a'});

  expect(R"({"model":{"type":"BPE","vocab":)", {path, "not valid JSON"});
  expect(R"({"model":{"type":"WordPiece","vocab":{}}})", {path, "WordPiece"});
  expect(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]}})",
         {path, "lacks the token for byte 0x00"});
  expect(R"({"model":{"type":"BPE","vocab":)" + vocab + R"(,"merges":["a q"]}})",
         {path, "merge 0"});
  expect(R"({"model":{"type":"BPE","vocab":)" + vocab + R"(,"merges":["ab"]}})",
         {path, "merges[0]"});
  expect(R"({"model":{"type":"BPE","vocab":)" + vocab + R"(,"merges":[7]}})", {path, "merges[0]"});
  expect(R"({"model":{"type":"BPE","vocab":{"a":"x"},"merges":[]}})", {path, "model.vocab['a']"});
  expect(
      R"({"model":{"type":"BPE","vocab":)" + vocab +
          R"(,"merges":[]},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(("},"behavior":"Isolated"}})",
      {path, "does not compile"});
  expect(R"({"model":{"type":"BPE","vocab":)" + vocab +
             R"(,"merges":[]},"normalizer":{"type":"Lowercase"}})",
         {path, "normalizer"});
  expect(R"({"model":{"type":"BPE","vocab":)" + vocab +
             R"(,"merges":[]},"added_tokens":[{"id":"x"}]})",
         {path, "added_tokens"});
  check_error([&] { (void)t.encode("ok \xc3\x28 bad"); }, {path, "not valid UTF-8 at byte 3"});
  check_error([&] { (void)t.token_bytes(100000); }, {path, "token id 100000 out of range"});
  check_error([&] { (void)t.require_token("<nope>"); },
              {path, "'<nope>'", "not in the vocabulary"});
}

TEST_CASE("tokenizer: NFC normalization (Qwen3's normalizer)") {
  using io::nfc::normalize;
  CHECK(normalize("plain ascii") == "plain ascii");
  CHECK(normalize("e\xcc\x81") == "\xc3\xa9");                                 // e + U+0301 -> é
  CHECK(normalize("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8") == "\xea\xb0\x81");  // jamo G A G -> 각
  CHECK(normalize("\xe2\x84\xa6") == "\xce\xa9");      // OHM SIGN -> GREEK OMEGA
  CHECK(normalize("\xe2\x84\xab") == "\xc3\x85");      // ANGSTROM SIGN -> Å
  CHECK(normalize("\xef\xac\x81") == "\xef\xac\x81");  // ﬁ: compatibility only, kept
  // A + ring above (230) + dot below (220): reordered to dot below first, composed to U+1EA0 + ring
  CHECK(normalize("A\xcc\x8a\xcc\xa3") == "\xe1\xba\xa0\xcc\x8a");
  CHECK(normalize("\xea\xb0\x81 \xe4\xbd\xa0") == "\xea\xb0\x81 \xe4\xbd\xa0");  // already NFC
  // Qwen3 applies it: decomposed and composed spellings give the same ids; DeepSeek does not.
  CHECK(qwen().encode("cafe\xcc\x81") == qwen().encode("caf\xc3\xa9"));
  CHECK(deepseek().encode("cafe\xcc\x81") != deepseek().encode("caf\xc3\xa9"));
}
