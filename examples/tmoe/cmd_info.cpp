// tmoe info: what this machine's CPU supports and which kernel set tmoe chose.
#include <cstdio>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "tmoe/tmoe.hpp"

namespace tmoe::cli {

int cmd_info(const Argv& argv) {
  Args args("info", argv, {});
  const auto& k = cpu::kernels();
  std::printf("tmoe %s\ncpu isa detected: %s\ncpu isa selected: %s\n", TMOE_VERSION_STRING,
              std::string(cpu::isa_name(cpu::detect_isa())).c_str(),
              std::string(cpu::isa_name(k.isa)).c_str());
  return 0;
}

}  // namespace tmoe::cli
