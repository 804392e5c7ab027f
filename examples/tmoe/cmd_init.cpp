// tmoe init: a model folder with random weights of any shape: config.json (copied from --config,
// or written from a named --preset, models/presets.hpp) and model.safetensors in the dtype given
// (bf16 by default), deterministic per seed. --config-only writes just config.json (the real
// sizes may not fit on disk: R1 is 1.3 TB in bf16; weights are streamed one tensor at a time, so
// memory is never the limit). A preset's FP8
// quantization_config is dropped when random bf16/f16/f32 weights are written with it.

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/io/config_json.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/models/presets.hpp"
#include "tmoe/models/random_init.hpp"

namespace tmoe::cli {

namespace {
// Streams the random weights into `file` one tensor at a time (memory: the largest tensor), with
// the values models::random_weights<T> gives.
template <class T>
void write_random(const io::ModelConfig& c, std::uint64_t seed, const std::string& file) {
  const auto specs = models::tensor_specs(c);
  std::vector<io::TensorDecl> decls;
  for (const auto& t : specs)
    decls.push_back(
        {t.name, t.role == models::TensorRole::matrix ? dtype_of_v<T> : DType::f32, t.shape});
  io::write_safetensors_streamed(file, decls, [&](std::size_t i, std::span<std::byte> out) {
    models::random_tensor<T>(specs[i], i, seed, 1.0f, reinterpret_cast<T*>(out.data()),
                             reinterpret_cast<float*>(out.data()));
  });
}
}  // namespace

int cmd_init(const Argv& argv) {
  Args args("init", argv, {"--config", "--preset", "--output", "--seed", "--dtype"},
            {"--config-only"});
  check(args.has("--config") != args.has("--preset"), "init",
        "give exactly one of --config and --preset");
  const std::string out = args.required("--output");
  const std::string dtype = args.str("--dtype", "bf16");
  const auto seed = static_cast<std::uint64_t>(args.integer("--seed", 0));
  const bool config_only = args.has("--config-only");
  check(dtype == "bf16" || dtype == "f16" || dtype == "f32", "init", "unsupported --dtype '", dtype,
        "' (bf16, f16, f32)");
  const std::string cfg_path = args.str("--config");
  io::ModelConfig c = args.has("--preset") ? models::preset(args.str("--preset")).config
                                           : io::load_model_config(cfg_path);
  namespace fs = std::filesystem;
  const fs::path cfg_out = fs::path(out) / "config.json";
  const double bytes = double(models::count_params(c).total) * (dtype == "f32" ? 4.0 : 2.0);
  // Weights are streamed to disk one tensor at a time, so the limit is the free disk space.
  fs::path probe = fs::absolute(fs::path(out));
  while (!probe.empty() && !fs::exists(probe) && probe != probe.parent_path())
    probe = probe.parent_path();
  std::error_code sec;
  const double avail = double(fs::space(probe, sec).available);
  check(config_only || sec || bytes <= avail, "init", "random ", dtype,
        " weights of this model take ", bytes / 1e9, " GB, more than the ", avail / 1e9,
        " GB free at '", probe.string(), "'; use --config-only");
  std::error_code ec;
  fs::create_directories(out, ec);
  check(!ec, "init", "cannot create folder '", out, "': ", ec.message());
  if (args.has("--preset")) {
    if (!config_only) c.fp8 = false;  // the random weights are not FP8 blocks
    std::ofstream f(cfg_out);
    f << io::model_config_json(c).dump(2) << "\n";
    check(f.good(), "init", "cannot write ", cfg_out.string());
  } else {
    fs::copy_file(
        fs::is_directory(cfg_path) ? fs::path(cfg_path) / "config.json" : fs::path(cfg_path),
        cfg_out, fs::copy_options::overwrite_existing, ec);
    check(!ec, "init", "cannot write ", cfg_out.string(), ": ", ec.message());
  }
  if (config_only) {
    std::fprintf(stderr, "[tmoe] wrote %s\n", cfg_out.string().c_str());
    return 0;
  }
  const std::string file = (fs::path(out) / "model.safetensors").string();
  if (dtype == "bf16")
    write_random<bf16>(c, seed, file);
  else if (dtype == "f16")
    write_random<f16>(c, seed, file);
  else
    write_random<float>(c, seed, file);
  std::fprintf(stderr, "[tmoe] wrote %s with random %s weights (seed %llu)\n", out.c_str(),
               dtype.c_str(), static_cast<unsigned long long>(seed));
  return 0;
}

}  // namespace tmoe::cli
