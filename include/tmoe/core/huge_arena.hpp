// tmoe/core/huge_arena.hpp: a bump allocator for large, long-lived buffers (the loader's
// interleaved weight copies) on transparent huge pages where the kernel offers them.
//
// HugeArena::allocate(bytes) returns `bytes` of zeroed memory, kAlign (4 KiB) aligned, valid until
// the arena is destroyed (no per-buffer free). Chunks are anonymous mmaps of at least kChunkBytes
// (rounded up to 2 MiB), given MADV_HUGEPAGE before their first touch, so that with
// /sys/kernel/mm/transparent_hugepage/enabled = madvise (the common default) a decode step's
// weight stream runs on 2 MiB pages: one TLB entry per 2 MiB instead of per 4 KiB, and no page
// walk every 4 KiB in the middle of the GEMV's prefetched stream. Untouched chunk tails cost
// address space only. TMOE_HUGEPAGES=0 in the environment skips the madvise (A/B measurements);
// where mmap is unavailable (non-POSIX) the arena falls back to aligned operator new.
// Allocation failure is a tmoe::Error naming the size.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define TMOE_HUGE_ARENA_MMAP 1
#endif

#include "tmoe/core/error.hpp"

namespace tmoe {

class HugeArena {
 public:
  static constexpr std::size_t kAlign = 4096;
  static constexpr std::size_t kHugePage = std::size_t{2} << 20;
  static constexpr std::size_t kChunkBytes = std::size_t{64} << 20;

  HugeArena() = default;
  HugeArena(const HugeArena&) = delete;
  HugeArena& operator=(const HugeArena&) = delete;
  HugeArena(HugeArena&& o) noexcept
      : chunks_(std::move(o.chunks_)),
        used_(std::exchange(o.used_, 0)),
        reserved_(std::exchange(o.reserved_, 0)) {}
  HugeArena& operator=(HugeArena&& o) noexcept {
    if (this != &o) {
      release();
      chunks_ = std::move(o.chunks_);
      used_ = std::exchange(o.used_, 0);
      reserved_ = std::exchange(o.reserved_, 0);
    }
    return *this;
  }
  ~HugeArena() { release(); }

  // `bytes` zeroed bytes, kAlign aligned (bytes == 0 gives a valid unique pointer too).
  std::byte* allocate(std::size_t bytes) {
    const std::size_t need = round_up(std::max<std::size_t>(bytes, 1), kAlign);
    if (chunks_.empty() || chunks_.back().size - chunks_.back().used < need) {
      const std::size_t size = round_up(std::max(need, kChunkBytes), kHugePage);
      chunks_.push_back({map(size), size, 0});
      reserved_ += size;
    }
    Chunk& c = chunks_.back();
    std::byte* p = c.base + c.used;
    c.used += need;
    used_ += need;
    return p;
  }

  std::size_t used_bytes() const { return used_; }          // handed out (rounded to kAlign)
  std::size_t reserved_bytes() const { return reserved_; }  // address space mapped

  // Whether chunks get MADV_HUGEPAGE: TMOE_HUGEPAGES unset or not "0".
  static bool huge_pages_enabled() {
    static const bool on = [] {
      const char* e = std::getenv("TMOE_HUGEPAGES");
      return !(e && std::string_view(e) == "0");
    }();
    return on;
  }

 private:
  struct Chunk {
    std::byte* base;
    std::size_t size, used;
  };
  static std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

  static std::byte* map(std::size_t size) {
#if defined(TMOE_HUGE_ARENA_MMAP)
    // Over-map by one huge page so the chunk can start on a 2 MiB boundary (THP needs aligned
    // 2 MiB ranges); the slack before and after is unmapped again.
    const std::size_t span = size + kHugePage;
    void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
      fail("huge_arena", "cannot map ", size, " bytes: ", std::strerror(errno));
    auto* b = static_cast<std::byte*>(raw);
    const auto addr = reinterpret_cast<std::uintptr_t>(b);
    const std::size_t lead = round_up(addr, kHugePage) - addr;
    if (lead) ::munmap(b, lead);
    if (kHugePage - lead) ::munmap(b + lead + size, kHugePage - lead);
    std::byte* base = b + lead;
#if defined(MADV_HUGEPAGE)
    if (huge_pages_enabled()) ::madvise(base, size, MADV_HUGEPAGE);  // advice: failure is harmless
#endif
    return base;
#else
    auto* p =
        static_cast<std::byte*>(::operator new (size, std::align_val_t{kAlign}, std::nothrow));
    if (!p) fail("huge_arena", "cannot allocate ", size, " bytes");
    std::memset(p, 0, size);
    return p;
#endif
  }

  void release() {
    for (const Chunk& c : chunks_) {
#if defined(TMOE_HUGE_ARENA_MMAP)
      ::munmap(c.base, c.size);
#else
      ::operator delete (c.base, std::align_val_t{kAlign});
#endif
    }
    chunks_.clear();
    used_ = reserved_ = 0;
  }

  std::vector<Chunk> chunks_;
  std::size_t used_ = 0, reserved_ = 0;
};

}  // namespace tmoe
