// tmoe tokenize: prints the token ids of a text (a JSON list) or of every string in a JSON file
// holding a list of strings (a JSON list of lists). No special tokens are added; special tokens
// written in the text are matched. --model is a model folder, a tokenizer.json or a .gguf file.
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "tmoe/io/gguf.hpp"
#include "tmoe/io/tokenizer.hpp"

namespace tmoe::cli {

int cmd_tokenize(const Argv& argv) {
  Args args("tokenize", argv, {"--model", "--text", "--file"});
  const std::string model = args.required("--model");
  check(args.has("--text") != args.has("--file"), "tokenize",
        "give exactly one of --text and --file");
  const io::Tokenizer tok = model.ends_with(".gguf")
                                ? io::gguf_tokenizer(io::GgufFile(model)).tokenizer
                                : io::Tokenizer::from_file(model);
  nlohmann::json out;
  if (args.has("--text")) {
    out = tok.encode(args.str("--text"));
  } else {
    const std::string file = args.str("--file");
    nlohmann::json list;
    try {
      list = nlohmann::json::parse(io::read_text_file(file));
    } catch (const nlohmann::json::exception& e) {
      fail("tokenize", file, ": not valid JSON: ", e.what());
    }
    check(list.is_array(), "tokenize", file, ": expected a JSON list of strings");
    out = nlohmann::json::array();
    for (std::size_t i = 0; i < list.size(); ++i) {
      check(list[i].is_string(), "tokenize", file, ": entry ", i, " is not a string");
      out.push_back(tok.encode(list[i].get_ref<const std::string&>()));
    }
  }
  std::puts(out.dump().c_str());
  return 0;
}

}  // namespace tmoe::cli
