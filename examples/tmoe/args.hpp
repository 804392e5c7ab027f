// examples/tmoe/args.hpp: the tmoe program's small argument parser. Options are "--name value",
// "-x value" or flags; every problem is a tmoe::Error naming the option.
#pragma once

#include <charconv>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "tmoe/core/error.hpp"

namespace tmoe::cli {

class Args {
 public:
  // `flags` take no value; every other option in `known` takes one.
  Args(std::string_view command, const std::vector<std::string_view>& argv,
       std::set<std::string> known, std::set<std::string> flags = {})
      : command_(command) {
    for (std::size_t i = 0; i < argv.size(); ++i) {
      const std::string a(argv[i]);
      if (!known.count(a) && !flags.count(a)) fail(command_, "unknown option '", a, "'");
      if (flags.count(a)) {
        values_[a] = "1";
        continue;
      }
      if (i + 1 >= argv.size()) fail(command_, "option ", a, " needs a value");
      values_[a] = std::string(argv[++i]);
    }
  }

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string str(const std::string& name, const std::string& def = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? def : it->second;
  }
  std::string required(const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) fail(command_, "missing required option ", name);
    return it->second;
  }
  long long integer(const std::string& name, long long def) const {
    if (!has(name)) return def;
    const std::string s = str(name);
    long long v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size())
      fail(command_, "option ", name, " expects an integer, got '", s, "'");
    return v;
  }
  double real(const std::string& name, double def) const {
    if (!has(name)) return def;
    const std::string s = str(name);
    try {
      std::size_t pos = 0;
      const double v = std::stod(s, &pos);
      if (pos == s.size()) return v;
    } catch (...) {
    }
    fail(command_, "option ", name, " expects a number, got '", s, "'");
  }

 private:
  std::string command_;
  std::map<std::string, std::string> values_;
};

}  // namespace tmoe::cli
