// tmoe init: a model folder with random weights of any shape: config.json (copied) and
// model.safetensors in the dtype given (bf16 by default), deterministic per seed.
#include <cstdio>
#include <filesystem>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/models/random_init.hpp"

namespace tmoe::cli {

namespace {
template <class T>
void write_random(const io::ModelConfig& c, std::uint64_t seed, const std::string& file) {
  const models::MemoryWeights w = models::random_weights<T>(c, seed);
  io::SafetensorsWriter out;
  for (const auto& name : w.names()) {
    const models::RawTensor* t = w.find(name);
    out.add(name, t->dtype, t->shape, std::span<const std::byte>(t->data, t->nbytes));
  }
  out.write(file);
}
}  // namespace

int cmd_init(const Argv& argv) {
  Args args("init", argv, {"--config", "--output", "--seed", "--dtype"});
  const std::string cfg_path = args.required("--config"), out = args.required("--output");
  const std::string dtype = args.str("--dtype", "bf16");
  const auto seed = static_cast<std::uint64_t>(args.integer("--seed", 0));
  const io::ModelConfig c = io::load_model_config(cfg_path);
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out, ec);
  check(!ec, "init", "cannot create folder '", out, "': ", ec.message());
  fs::copy_file(
      fs::is_directory(cfg_path) ? fs::path(cfg_path) / "config.json" : fs::path(cfg_path),
      fs::path(out) / "config.json", fs::copy_options::overwrite_existing, ec);
  check(!ec, "init", "cannot write ", (fs::path(out) / "config.json").string(), ": ", ec.message());
  const std::string file = (fs::path(out) / "model.safetensors").string();
  if (dtype == "bf16")
    write_random<bf16>(c, seed, file);
  else if (dtype == "f16")
    write_random<f16>(c, seed, file);
  else if (dtype == "f32")
    write_random<float>(c, seed, file);
  else
    fail("init", "unsupported --dtype '", dtype, "' (bf16, f16, f32)");
  std::fprintf(stderr, "[tmoe] wrote %s with random %s weights (seed %llu)\n", out.c_str(),
               dtype.c_str(), static_cast<unsigned long long>(seed));
  return 0;
}

}  // namespace tmoe::cli
