// tests/io/io_test_util.hpp: helpers for the io tests: temporary files and error-message checks.
#pragma once

#include <doctest/doctest.h>

#include <unistd.h>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "tmoe/core/error.hpp"

namespace tmoe::test {

// A fresh directory under the system temp dir, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    namespace fs = std::filesystem;
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("tmoe_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(std::string_view name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, std::span<const std::byte> b) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!b.empty()) REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
  std::fclose(f);
}
inline void write_text(const std::string& path, std::string_view s) {
  write_bytes(path, std::as_bytes(std::span<const char>(s.data(), s.size())));
}

// Runs fn, which must throw tmoe::Error whose message contains every string in `parts`.
template <class F>
void check_error(F&& fn, std::initializer_list<std::string_view> parts) {
  std::string msg;
  try {
    fn();
  } catch (const tmoe::Error& e) {
    msg = e.what();
  }
  INFO("message: ", msg);
  REQUIRE_FALSE(msg.empty());
  CHECK(msg.find('\n') == std::string::npos);
  for (auto p : parts) {
    INFO("expected part: ", p);
    CHECK(msg.find(p) != std::string::npos);
  }
}

}  // namespace tmoe::test
