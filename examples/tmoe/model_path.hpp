// examples/tmoe/model_path.hpp: what --model names, checked once with a clear error.
#pragma once

#include <filesystem>
#include <string>

#include "tmoe/core/error.hpp"

namespace tmoe::cli {

// A Hugging Face folder (config.json + safetensors) or a .gguf file (its header is checked when
// it is opened); throws naming the path.
inline void check_model_path(const std::string& path, const char* op) {
  std::error_code ec;
  check(std::filesystem::exists(path, ec), op, "model path '", path, "' does not exist");
  if (std::filesystem::is_directory(path, ec)) {
    check(std::filesystem::exists(std::filesystem::path(path) / "config.json", ec), op,
          "model folder '", path, "' has no config.json");
    return;
  }
  if (path.ends_with(".gguf")) return;
  fail(op, "model path '", path, "' is neither a model folder nor a .gguf file");
}

}  // namespace tmoe::cli
