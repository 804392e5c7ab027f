// tmoe info: what this machine's CPU supports and which kernel set tmoe chose; with --model PATH
// (a Hugging Face folder or a .gguf file) also what that model is: family, sizes, weight formats
// and the bytes of weights one decode step reads.
#include <cstdio>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "model_path.hpp"
#include "tmoe/tmoe.hpp"

namespace tmoe::cli {

int cmd_info(const Argv& argv) {
  Args args("info", argv, {"--model"});
  const auto& k = cpu::kernels();
  std::printf("tmoe %s\ncpu isa detected: %s\ncpu isa selected: %s\n", TMOE_VERSION_STRING,
              std::string(cpu::isa_name(cpu::detect_isa())).c_str(),
              std::string(cpu::isa_name(k.isa)).c_str());
  if (!args.has("--model")) return 0;
  const std::string path = args.str("--model");
  check_model_path(path, "info");
  models::LoadOptions opt;
  opt.max_context = 1;
  opt.progress = load_progress_bar();
  const auto model = models::load_model(path, opt);
  const io::ModelConfig& c = model->config();
  std::printf("model: %s\nfamily: %s\nlayers: %zu\nhidden: %zu\nvocab: %zu\n", path.c_str(),
              std::string(io::family_name(c.family)).c_str(), c.num_hidden_layers, c.hidden_size,
              c.vocab_size);
  if (c.is_moe())
    std::printf("experts: %zu routed (top %zu), %zu shared\n", c.n_routed_experts,
                c.num_experts_per_tok, c.n_shared_experts);
  std::printf("weight format: %s\ndecode weight bytes: %zu\n", model->weight_format().c_str(),
              model->decode_weight_bytes());
  return 0;
}

}  // namespace tmoe::cli
