// Tests for tmoe/io/chat_template.hpp with the DeepSeek-V3 tokenizer files: the rendered R1 text,
// token ids read from the tokenizer, reasoning stripping, tool turns and errors.
#include <doctest/doctest.h>

#include "io_test_util.hpp"
#include "tmoe/io/chat_template.hpp"

using namespace tmoe;
using io::ChatMessage;
using io::TokenId;
using tmoe::test::check_error;

namespace {
const std::string kDs = std::string(TMOE_TEST_DATA_DIR) + "/tokenizers/deepseek_v3";

io::ChatTemplate r1_template() {
  // R1's tokenizer_config: the V3 one plus the <think>\n generation prompt.
  auto cfg = nlohmann::json::parse(io::read_text_file(kDs + "/tokenizer_config.json"));
  cfg["chat_template"] =
      cfg["chat_template"].get<std::string>() + "{{'<｜Assistant｜><think>\\n'}}";
  return io::ChatTemplate::from_config(cfg, "r1/tokenizer_config.json");
}
}  // namespace

TEST_CASE("chat_template: DeepSeek-R1 rendering") {
  const auto t = r1_template();
  CHECK(t.render({{"user", "Hi"}}) ==
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n");
  CHECK(t.render({{"system", "A"}, {"system", "B"}, {"user", "Q"}}, false) ==
        "<｜begin▁of▁sentence｜>A\n\nB<｜User｜>Q");
  CHECK(
      t.render({{"user", "Q1"}, {"assistant", "<think>\nlong\n</think>\n\nA1"}, {"user", "Q2"}}) ==
      "<｜begin▁of▁sentence｜><｜User｜>Q1<｜Assistant｜>\n\nA1<｜end▁of▁sentence｜><｜User｜>Q2<"
      "｜Assistant｜><think>\n");
  CHECK(t.render({{"user", "Q"}, {"assistant", "a</think>b</think>c"}}, false) ==
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜>c<｜end▁of▁sentence｜>");
  CHECK(t.render({{"user", "Q"}, {"tool", "r1"}, {"tool", "r2"}, {"assistant", "done"}}, true) ==
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>r1<"
        "｜tool▁output▁end｜>\n"
        "<｜tool▁output▁begin｜>r2<｜tool▁output▁end｜><｜tool▁outputs▁end｜>done<"
        "｜end▁of▁sentence｜>"
        "<｜Assistant｜><think>\n");
  check_error([&] { (void)t.render({{"robot", "x"}}); }, {"role 'robot'"});
}

TEST_CASE("chat_template: V3 tokenizer_config (no <think>) and ids from the tokenizer") {
  const auto tok = io::Tokenizer::from_file(kDs);
  const auto v3 = io::ChatTemplate::from_file(kDs);
  CHECK(v3.think_open.empty());
  CHECK(v3.render({{"user", "Hi"}}) == "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>");
  const auto ids = v3.encode(tok, {{"user", "Hi"}});
  const auto hi = tok.encode("Hi");
  std::vector<TokenId> want{0, 128803};
  want.insert(want.end(), hi.begin(), hi.end());
  want.push_back(128804);
  CHECK(ids == want);
  CHECK(v3.eos_id(tok) == 1);
  // R1 template with a tokenizer lacking <think>: <think> is tokenized as plain text, never
  // assumed.
  const auto r1 = r1_template();
  const auto r1_ids = r1.encode(tok, {{"user", "Hi"}});
  CHECK(r1_ids.size() > want.size());
  CHECK(tok.decode(r1_ids) == r1.render({{"user", "Hi"}}));
}

TEST_CASE("chat_template: bad tokenizer_config") {
  check_error([] { (void)io::ChatTemplate::from_config(nlohmann::json::object(), "c.json"); },
              {"c.json", "no chat_template"});
  check_error(
      [] {
        (void)io::ChatTemplate::from_config({{"chat_template", "{{ messages }}"}}, "c.json");
      },
      {"c.json", "unsupported chat template"});
  check_error(
      [] {
        (void)io::ChatTemplate::from_config({{"bos_token", 5}, {"chat_template", "x"}}, "c.json");
      },
      {"c.json", "bos_token"});
  io::ChatTemplate t;
  t.user = "<｜NoSuch｜>";
  const auto tok = io::Tokenizer::from_file(kDs);
  check_error(
      [&] {
        (void)t.encode(tok, {{"user", "x"}});
      },
      {"'<｜NoSuch｜>'", "not in the vocabulary"});
}
