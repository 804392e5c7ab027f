// examples/tmoe/commands.hpp: one function per tmoe subcommand, each in its own cmd_<name>.cpp.
// Each takes the arguments after the subcommand name and returns the exit code; errors are
// thrown as tmoe::Error and printed by main() as one line.
#pragma once

#include <string_view>
#include <vector>

namespace tmoe::cli {

using Argv = std::vector<std::string_view>;

int cmd_info(const Argv& args);
int cmd_tokenize(const Argv& args);
int cmd_generate(const Argv& args);
int cmd_logits(const Argv& args);
int cmd_init(const Argv& args);
int cmd_bench(const Argv& args);
int cmd_quantize(const Argv& args);

}  // namespace tmoe::cli
