// libFuzzer target: config.json text -> ModelConfig. Only tmoe::Error may escape (JSON errors
// included, converted by the caller exactly as load_model_config does).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tmoe/io/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  try {
    (void)tmoe::io::parse_model_config(j, "fuzz/config.json");
  } catch (const tmoe::Error&) {
  }
  return 0;
}
