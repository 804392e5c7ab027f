// libFuzzer target: parse_safetensors on arbitrary bytes. Only tmoe::Error may escape the parser;
// on success every tensor's bytes must lie inside the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "tmoe/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto h = tmoe::io::parse_safetensors(file, "fuzz.safetensors");
    for (const auto& t : h.tensors) {
      if (t.data < file.data() || t.data + t.nbytes() > file.data() + file.size()) std::abort();
      volatile std::byte sink{};
      if (t.nbytes()) sink = t.data[t.nbytes() - 1];
      (void)sink;
    }
  } catch (const tmoe::Error&) {
  }
  return 0;
}
