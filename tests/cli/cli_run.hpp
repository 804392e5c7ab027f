// tests/cli/cli_run.hpp: run a shell command and capture its stdout (the bench and quantize CLI
// tests); `status` is pclose's raw wait status.
#pragma once

#include <doctest/doctest.h>

#include <cstdio>
#include <string>

namespace tmoe::test {

struct CommandResult {
  int status = -1;
  std::string out;
};

inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* f = popen(command.c_str(), "r");
  REQUIRE(f != nullptr);
  char buf[4096];
  std::size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) r.out.append(buf, got);
  r.status = pclose(f);
  return r;
}

}  // namespace tmoe::test
