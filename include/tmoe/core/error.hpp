// tmoe/core/error.hpp: the one exception type thrown at API boundaries, and helpers that build
// its message. Every message is one line of the form "[op] what: expected X, got Y" so a program
// can print e.what() and exit; kernels never throw (they TMOE_ASSERT their preconditions).
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace tmoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  std::string s = os.str();
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';  // errors are one line, whatever the caller passed
  return s;
}
}  // namespace detail

// Throws tmoe::Error("[op] " + args...).
template <class... Args>
[[noreturn]] void fail(std::string_view op, Args&&... args) {
  throw Error(detail::concat("[", op, "] ", std::forward<Args>(args)...));
}

// Checks an API-boundary condition; on failure throws "[op] message".
template <class... Args>
inline void check(bool cond, std::string_view op, Args&&... args) {
  if (!cond) [[unlikely]]
    fail(op, std::forward<Args>(args)...);
}

}  // namespace tmoe
