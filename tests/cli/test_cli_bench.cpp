// `tmoe bench` end to end: runs the built program on the built-in default model (a few tokens,
// one repetition, a 64 MiB bandwidth array: about a second) and checks the contract of its
// --json line: the last stdout line is one JSON object with positive medians inside their
// spreads, and bw_fraction equal to bytes_per_token * tg_tok_s / read bandwidth. Bad options
// exit non-zero with one line on stderr.
#include <doctest/doctest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/cli_run.hpp"

namespace {

using Result = tmoe::test::CommandResult;
const auto run = tmoe::test::run_command;

std::string last_line(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  const auto nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

const std::string kTmoe = TMOE_CLI_PATH;

}  // namespace

TEST_CASE("tmoe bench --json: the last line is the result object") {
  const Result r = run(kTmoe + " bench -p 8 -n 4 -r 1 --bw-mib 64 --json 2>/dev/null");
  REQUIRE(r.status == 0);
  const std::string line = last_line(r.out);
  CHECK(r.out.find("| tg4") != std::string::npos);  // the human table comes first
  const auto j = nlohmann::json::parse(line);
  REQUIRE(j.is_object());
  CHECK(j.at("format") == "builtin");
  CHECK(j.at("weight_format") == "bf16");
  CHECK(j.at("threads") == 2);
  CHECK(j.at("n_prompt") == 8);
  CHECK(j.at("n_gen") == 4);
  for (const char* k : {"pp", "tg"}) {
    const std::string key = std::string(k) + "_tok_s";
    const double med = j.at(key), lo = j.at(key + "_min"), hi = j.at(key + "_max");
    CHECK(med > 0);
    CHECK(lo <= med);
    CHECK(med <= hi);
  }
  const double bytes = j.at("bytes_per_token"), tg = j.at("tg_tok_s"), bw = j.at("read_bw_gbs");
  CHECK(bytes > 1e6);  // the default model reads several MB per token
  CHECK(bw > 0);
  CHECK(double(j.at("read_bw_gbs_min")) <= bw);
  CHECK(bw <= double(j.at("read_bw_gbs_max")));
  CHECK(double(j.at("bw_fraction")) == doctest::Approx(bytes * tg / (bw * 1e9)).epsilon(1e-9));
}

TEST_CASE("tmoe bench: bad options fail with one line") {
  for (const char* opts :
       {"-r 0", "-p 0 -n 0", "-t x", "--model /nonexistent/folder", "--bogus 1"}) {
    CAPTURE(opts);
    const Result r = run(kTmoe + " bench " + opts + " 2>&1 >/dev/null");
    CHECK(r.status != 0);
    CHECK(r.out.rfind("tmoe: [bench]", 0) == 0);
    CHECK(r.out.find('\n') == r.out.size() - 1);
  }
}
