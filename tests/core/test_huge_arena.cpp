// HugeArena (core/huge_arena.hpp): zeroed, 4 KiB aligned, non-overlapping buffers that live as
// long as the arena, across chunk boundaries and for buffers larger than a chunk.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "tmoe/core/huge_arena.hpp"

using tmoe::HugeArena;

TEST_CASE("HugeArena hands out zeroed, aligned, disjoint buffers") {
  HugeArena arena;
  CHECK(arena.used_bytes() == 0);
  CHECK(arena.reserved_bytes() == 0);
  // Sizes around the 4 KiB rounding, several per chunk, one larger than a chunk.
  const std::vector<std::size_t> sizes = {
      1, 4095, 4096, 4097, 3 << 20, HugeArena::kChunkBytes, 123457, 0, HugeArena::kChunkBytes + 5};
  std::vector<std::byte*> bufs;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    std::byte* p = arena.allocate(sizes[i]);
    REQUIRE(p != nullptr);
    CHECK(reinterpret_cast<std::uintptr_t>(p) % HugeArena::kAlign == 0);
    bool zero = true;
    for (std::size_t j = 0; j < sizes[i]; j += 997) zero = zero && p[j] == std::byte{0};
    if (sizes[i]) zero = zero && p[sizes[i] - 1] == std::byte{0};
    CHECK(zero);
    std::memset(p, static_cast<int>(i + 1), sizes[i]);
    bufs.push_back(p);
  }
  // Each buffer still holds its own fill: nothing overlapped.
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (!sizes[i]) continue;
    CHECK(bufs[i][0] == std::byte(i + 1));
    CHECK(bufs[i][sizes[i] - 1] == std::byte(i + 1));
  }
  CHECK(arena.used_bytes() >= 2 * HugeArena::kChunkBytes);
  CHECK(arena.reserved_bytes() >= arena.used_bytes());
  CHECK(arena.reserved_bytes() % HugeArena::kHugePage == 0);
  HugeArena moved = std::move(arena);
  CHECK(arena.used_bytes() == 0);
  CHECK(moved.reserved_bytes() % HugeArena::kHugePage == 0);
  CHECK(bufs[0][0] == std::byte{1});  // still mapped: owned by `moved` now
}
