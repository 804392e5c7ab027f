// libFuzzer target: parse_gguf on arbitrary bytes. Only tmoe::Error may escape; on success every
// tensor's bytes lie inside the input and start at a multiple of the alignment.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "tmoe/io/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto g = tmoe::io::parse_gguf(file, "fuzz.gguf");
    for (const auto& t : g.tensors) {
      if (t.data < file.data() || t.data + t.nbytes > file.data() + file.size()) std::abort();
      if ((t.offset % g.alignment) != 0) std::abort();
      volatile std::byte sink{};
      if (t.nbytes) sink = t.data[t.nbytes - 1];
      (void)sink;
    }
  } catch (const tmoe::Error&) {
  }
  return 0;
}
