// tmoe quantize: rewrites a model's weights in another format.
//
//   tmoe quantize --model PATH --type TYPE --output FILE.gguf [--tokenizer FILE|none]
//     A GGUF file llama.cpp loads (models/gguf_export.hpp: its keys, tensor names and block
//     layouts). TYPE: f32 f16 bf16 q8_0 q4_0 q4_k q6_k for every matrix (norms, biases and the
//     router stay F32). The tokenizer is PATH/tokenizer.json when PATH is a folder that has one,
//     or --tokenizer FILE (a tokenizer.json or a folder holding one); `none` (or no tokenizer
//     found) writes tokenizer.ggml.model "none".
//   tmoe quantize --model PATH --type TYPE --output DIR
//     A Hugging Face folder: config.json, model.safetensors and the tokenizer / generation files
//     of PATH. TYPE: f32 f16 bf16, or fp8 as DeepSeek-V3/R1 store it: every 2-D weight under
//     model.layers but the routers (attention, dense MLP, routed and shared experts) as
//     F8_E4M3 with an F32 <name>_scale_inv of 128 x 128 block scales (scale = block amax / 448),
//     the rest BF16 and e_score_correction_bias F32; config.json gets R1's quantization_config.
//     The GGUF block types have no Hugging Face layout and are refused for a folder. A folder
//     output needs a folder input (its tensor names are copied).
// PATH is a model folder or a .gguf file; FP8 and quantized inputs are dequantized first.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "model_path.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/tokenizer.hpp"
#include "tmoe/models/gguf_export.hpp"
#include "tmoe/models/gguf_source.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/quant/quantize.hpp"

namespace tmoe::cli {

namespace {

namespace fs = std::filesystem;

// The tokenizer.json to embed in a GGUF, or "" for none.
std::string find_tokenizer(const Args& args, const std::string& model) {
  if (args.has("--tokenizer")) {
    const std::string t = args.str("--tokenizer");
    if (t == "none") return "";
    const fs::path p = fs::is_directory(t) ? fs::path(t) / "tokenizer.json" : fs::path(t);
    check(fs::exists(p), "quantize", "tokenizer '", p.string(), "' does not exist");
    return p.string();
  }
  if (fs::is_directory(model) && fs::exists(fs::path(model) / "tokenizer.json"))
    return (fs::path(model) / "tokenizer.json").string();
  return "";
}

void write_gguf(const Args& args, const std::string& model, const std::string& type,
                const std::string& out) {
  check(type != "fp8", "quantize",
        "--type fp8 has no GGUF type llama.cpp loads; write a folder (--output DIR) instead");
  const auto t = models::parse_ggml_type(type);
  check(t.has_value(), "quantize", "unsupported --type '", type,
        "' for a .gguf output (f32, f16, bf16, q8_0, q4_0, q4_k, q6_k)");
  std::shared_ptr<const models::WeightSource> src;
  io::ModelConfig cfg;
  if (models::is_gguf_path(model)) {
    auto g = std::make_shared<models::GgufSource>(model);
    cfg = g->config();
    src = g;
  } else {
    cfg = io::load_model_config(model);
    src = std::make_shared<models::SafetensorsSource>(model);
  }
  const std::string tok_path = find_tokenizer(args, model);
  std::unique_ptr<io::TokenizerSpec> tok;
  if (!tok_path.empty())
    tok = std::make_unique<io::TokenizerSpec>(io::tokenizer_spec_from_file(tok_path));
  models::GgufExportOptions opt;
  opt.type = *t;
  std::size_t last_pct = 101;
  opt.progress = [&](std::size_t done, std::size_t total, const std::string&) {
    const std::size_t pct = total ? 100 * done / total : 100;
    if (pct / 10 != last_pct / 10) std::fprintf(stderr, "\r[tmoe] %3zu%%", pct);
    last_pct = pct;
  };
  std::fprintf(stderr, "[tmoe] %s -> %s (%s), tokenizer: %s\n", model.c_str(), out.c_str(),
               type.c_str(), tok_path.empty() ? "none" : tok_path.c_str());
  const models::GgufExportReport r = models::export_gguf(cfg, *src, tok.get(), opt, out);
  std::fprintf(stderr, "\r[tmoe] wrote %s: %s, %zu tensors, %.1f MB of tensor data (", out.c_str(),
               r.architecture.c_str(), r.tensors, static_cast<double>(r.tensor_bytes) / 1e6);
  bool first = true;
  for (const auto& [name, count] : r.type_counts) {
    std::fprintf(stderr, "%s%zu %s", first ? "" : ", ", count, name.c_str());
    first = false;
  }
  std::fprintf(stderr, ")\n");
}

bool is_weight_dtype(DType d) {
  return d == DType::f32 || d == DType::f16 || d == DType::bf16 || d == DType::f8_e4m3;
}

// R1 stores these as F8_E4M3 blocks: the 2-D weights of the decoder layers (attention, dense MLP,
// experts) except the routers (mlp.gate / block_sparse_moe.gate).
bool is_fp8_projection(const std::string& name, const models::RawTensor& t) {
  return name.starts_with("model.layers.") && name.ends_with(".weight") &&
         !name.ends_with(".gate.weight") && t.shape.size() == 2;
}

template <class T>
std::vector<T> narrow(const std::vector<float>& x) {
  std::vector<T> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = from_float<T>(x[i]);
  return y;
}

void write_folder(const std::string& model, const std::string& type, const std::string& out) {
  check(type == "f32" || type == "f16" || type == "bf16" || type == "fp8", "quantize",
        "unsupported --type '", type,
        "' for a folder output (f32, f16, bf16, fp8; the GGUF block types need --output "
        "FILE.gguf)");
  check(fs::is_directory(model), "quantize", model,
        ": a folder output needs a model folder as input (GGUF to folder is not supported)");
  auto src = std::make_shared<models::SafetensorsSource>(model);
  const models::WeightLoader loader(src);
  std::error_code ec;
  check(fs::weakly_canonical(model, ec) != fs::weakly_canonical(out, ec), "quantize",
        "--output must differ from --model");
  fs::create_directories(out, ec);
  check(!ec, "quantize", "cannot create folder '", out, "': ", ec.message());

  io::SafetensorsWriter w;
  std::size_t n_fp8 = 0, n = 0;
  for (const auto& name : src->checkpoint().names()) {
    if (name.ends_with("_scale_inv")) continue;  // consumed by read_floats of its weight
    const models::RawTensor& t = loader.raw(name);
    if (!is_weight_dtype(t.dtype)) {  // other tensors are copied as they are
      w.add(name, t.dtype, t.shape, std::span<const std::byte>(t.data, t.nbytes));
      continue;
    }
    const std::vector<float> x = loader.read_floats(name);
    ++n;
    if (type == "fp8" && is_fp8_projection(name, t)) {
      const std::size_t rows = t.shape[0], cols = t.shape[1];
      const auto q = quant::quantize<quant::Fp8Block>(x.data(), rows, cols);
      const auto v = q.view();
      w.add(name, DType::f8_e4m3, t.shape,
            std::as_bytes(std::span<const f8_e4m3>(v.blocks, rows * cols)));
      w.add(name + "_scale_inv", std::vector<std::size_t>{(rows + 127) / 128, (cols + 127) / 128},
            std::span<const float>(v.scales, ((rows + 127) / 128) * ((cols + 127) / 128)));
      ++n_fp8;
    } else if (type == "f32" || name.ends_with("e_score_correction_bias")) {
      w.add(name, t.shape, std::span<const float>(x));
    } else if (type == "f16") {
      const auto y = narrow<f16>(x);
      w.add(name, t.shape, std::span<const f16>(y));
    } else {
      const auto y = narrow<bf16>(x);
      w.add(name, t.shape, std::span<const bf16>(y));
    }
  }
  w.set_metadata("format", "pt");
  w.write((fs::path(out) / "model.safetensors").string());

  // config.json: the dtype, and R1's quantization_config for fp8 (dropped otherwise).
  std::ifstream in(fs::path(model) / "config.json");
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(in, nullptr, false);
  check(!cfg.is_discarded() && cfg.is_object(), "quantize", model,
        "/config.json: not a JSON object");
  const char* dtype = type == "f32" ? "float32" : type == "f16" ? "float16" : "bfloat16";
  for (const char* k : {"torch_dtype", "dtype"})
    if (cfg.contains(k)) cfg[k] = dtype;
  if (!cfg.contains("torch_dtype") && !cfg.contains("dtype")) cfg["torch_dtype"] = dtype;
  cfg.erase("quantization_config");
  if (type == "fp8")
    cfg["quantization_config"] = {{"activation_scheme", "dynamic"},
                                  {"fmt", "e4m3"},
                                  {"quant_method", "fp8"},
                                  {"weight_block_size", {128, 128}}};
  std::ofstream cf(fs::path(out) / "config.json");
  cf << cfg.dump(2) << "\n";
  check(cf.good(), "quantize", "cannot write ", (fs::path(out) / "config.json").string());
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    if (fs::exists(fs::path(model) / f)) {
      fs::copy_file(fs::path(model) / f, fs::path(out) / f, fs::copy_options::overwrite_existing,
                    ec);
      check(!ec, "quantize", "cannot copy ", f, " to ", out, ": ", ec.message());
    }
  std::fprintf(stderr, "[tmoe] wrote %s: %zu float tensors as %s", out.c_str(), n, type.c_str());
  if (type == "fp8") std::fprintf(stderr, " (%zu projections as F8_E4M3 + scale_inv)", n_fp8);
  std::fprintf(stderr, "\n");
}

}  // namespace

int cmd_quantize(const Argv& argv) {
  Args args("quantize", argv, {"--model", "--type", "--output", "--tokenizer"});
  const std::string model = args.required("--model"), out = args.required("--output");
  std::string type = args.required("--type");
  for (auto& ch : type) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  check_model_path(model, "quantize");
  if (models::is_gguf_path(out))
    write_gguf(args, model, type, out);
  else
    write_folder(model, type, out);
  return 0;
}

}  // namespace tmoe::cli
