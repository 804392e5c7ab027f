// tmoe info: what this machine's CPU supports and which kernel set tmoe chose. With --preset NAME
// (models/presets.hpp): that model's shape, parameter counts (total; activated per token, the
// embedding table excluded) and the bytes of weights one decoded token reads in each format. With
// --model PATH (a Hugging Face folder or a .gguf file): what that model is: family, sizes, weight
// formats and the bytes of weights one decode step reads.
#include <cstdio>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "model_path.hpp"
#include "tmoe/models/presets.hpp"
#include "tmoe/quant/formats.hpp"
#include "tmoe/tmoe.hpp"

namespace tmoe::cli {

namespace {

void print_preset(const models::Preset& p) {
  const auto& c = p.config;
  const auto n = models::count_params(c);
  std::printf("preset %s: %s\n", p.name.c_str(), p.description.c_str());
  std::printf("  %s, hidden %zu, %zu layers, vocab %zu",
              std::string(io::family_name(c.family)).c_str(), c.hidden_size, c.num_hidden_layers,
              c.vocab_size);
  if (c.is_mla())
    std::printf(", MLA %zu heads (q_lora %zu, kv_lora %zu, nope %zu, rope %zu, v %zu)",
                c.num_attention_heads, c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim,
                c.qk_rope_head_dim, c.v_head_dim);
  else
    std::printf(", GQA %zu/%zu heads of %zu", c.num_attention_heads, c.num_key_value_heads,
                c.head_dim);
  if (c.is_moe())
    std::printf(", %zu experts top-%zu + %zu shared (width %zu)", c.n_routed_experts,
                c.num_experts_per_tok, c.n_shared_experts, c.moe_intermediate_size);
  std::printf("\n  parameters: %.3fB total, %.3fB activated per token (embedding %.3fB)",
              n.total / 1e9, n.active / 1e9, n.embedding / 1e9);
  if (p.published_params > 0) {
    std::printf(" | published %.4gB", p.published_params / 1e9);
    if (p.published_active > 0) std::printf(" / %.4gB activated", p.published_active / 1e9);
  }
  std::printf("\n  weight bytes read per decoded token:\n");
  struct F {
    const char* name;
    double bytes_per_weight;
  };
  const F formats[] = {{"f32", 4.0},
                       {"bf16", 2.0},
                       {"q8_0", sizeof(quant::BlockQ8_0) / 32.0},
                       {"fp8_block", 1.0 + 4.0 / (128.0 * 128.0)},
                       {"q6_k", sizeof(quant::BlockQ6_K) / 256.0},
                       {"q4_k", sizeof(quant::BlockQ4_K) / 256.0},
                       {"q4_0", sizeof(quant::BlockQ4_0) / 32.0}};
  for (const auto& f : formats)
    std::printf("    %-10s %9.3f GB  (%.4f bytes/weight)\n", f.name,
                models::decode_bytes(c, f.bytes_per_weight) / 1e9, f.bytes_per_weight);
}

}  // namespace

int cmd_info(const Argv& argv) {
  Args args("info", argv, {"--preset", "--model"});
  if (args.has("--preset")) {
    print_preset(models::preset(args.str("--preset")));
    return 0;
  }
  const auto& k = cpu::kernels();
  std::printf("tmoe %s\ncpu isa detected: %s\ncpu isa selected: %s\n", TMOE_VERSION_STRING,
              std::string(cpu::isa_name(cpu::detect_isa())).c_str(),
              std::string(cpu::isa_name(k.isa)).c_str());
  std::printf("presets: %s\n", models::preset_names().c_str());
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
