// A small, strict command-line parser shared by the ds4-parity subcommands. Every flag is declared
// with its destination; parse() rejects an unknown flag, a missing value or a bad number with a
// one-line ds4::Error ("bad flag: ...") that the tool prints before exiting 2.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace ds4 {

class ArgParser {
 public:
  explicit ArgParser(std::string command) : command_(std::move(command)) {}
  // --name VALUE
  ArgParser& option(const std::string& name, std::string* dest, const std::string& help);
  ArgParser& option(const std::string& name, int64_t* dest, const std::string& help, int64_t lo = INT64_MIN,
                    int64_t hi = INT64_MAX);
  ArgParser& option(const std::string& name, double* dest, const std::string& help);
  // --name (no value)
  ArgParser& flag(const std::string& name, bool* dest, const std::string& help);
  // A flag that no longer exists: giving it, with or without a value, is the error
  // "bad flag: <name> <hint>" (not shown by usage()).
  ArgParser& retired(const std::string& name, const std::string& hint);
  // Words that are not flags (e.g. input files); `min`/`max` bound their count.
  ArgParser& positionals(std::vector<std::string>* dest, const std::string& help, size_t min = 0,
                         size_t max = SIZE_MAX);
  // Parses; returns false if --help was given (usage() should be printed, exit 0).
  bool parse(const std::vector<std::string>& args);
  std::string usage() const;

 private:
  struct Opt {
    std::string name, help;
    std::function<void(const std::string&)> set;  // null for flags
    bool* flag = nullptr;
  };
  std::string command_;
  std::vector<Opt> opts_;
  std::vector<std::pair<std::string, std::string>> retired_;  // name, hint
  std::vector<std::string>* positional_ = nullptr;
  std::string positional_help_;
  size_t pos_min_ = 0, pos_max_ = SIZE_MAX;
};

}  // namespace ds4
