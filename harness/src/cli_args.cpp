#include "ds4/cli_args.h"

#include "ds4/config.h"
#include "ds4/error.h"

namespace ds4 {

ArgParser& ArgParser::option(const std::string& name, std::string* dest, const std::string& help) {
  opts_.push_back({name, help, [dest](const std::string& v) { *dest = v; }, nullptr});
  return *this;
}

ArgParser& ArgParser::option(const std::string& name, int64_t* dest, const std::string& help, int64_t lo,
                             int64_t hi) {
  opts_.push_back({name, help, [=](const std::string& v) { *dest = parse_int_flag(name, v, lo, hi); }, nullptr});
  return *this;
}

ArgParser& ArgParser::option(const std::string& name, double* dest, const std::string& help) {
  opts_.push_back({name, help, [=](const std::string& v) { *dest = parse_float_flag(name, v, -1e300, 1e300); }, nullptr});
  return *this;
}

ArgParser& ArgParser::flag(const std::string& name, bool* dest, const std::string& help) {
  opts_.push_back({name, help, nullptr, dest});
  return *this;
}

ArgParser& ArgParser::retired(const std::string& name, const std::string& hint) {
  retired_.emplace_back(name, hint);
  return *this;
}

ArgParser& ArgParser::positionals(std::vector<std::string>* dest, const std::string& help, size_t min, size_t max) {
  positional_ = dest;
  positional_help_ = help;
  pos_min_ = min;
  pos_max_ = max;
  return *this;
}

bool ArgParser::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const FlagArg arg = split_flag_arg(args[i]);
    const std::string& a = arg.name;
    if (a == "-h" || a == "--help") return false;
    if (a.size() > 1 && a[0] == '-') {
      for (const auto& [name, hint] : retired_)
        if (name == a) fail("bad flag: " + a + " " + hint);
      const Opt* found = nullptr;
      for (const Opt& o : opts_)
        if (o.name == a) found = &o;
      if (!found) fail("bad flag: unknown option '" + a + "' for `ds4-parity " + command_ + "` (see --help)");
      if (found->flag) {
        if (arg.value) fail("bad flag: " + a + " takes no value");
        *found->flag = true;
      } else if (arg.value) {
        found->set(*arg.value);
      } else {
        if (i + 1 >= args.size()) fail("bad flag: " + a + " needs a value");
        found->set(args[++i]);
      }
      continue;
    }
    if (!positional_) fail("bad flag: unexpected argument '" + a + "' for `ds4-parity " + command_ + "`");
    positional_->push_back(a);
  }
  if (positional_ && (positional_->size() < pos_min_ || positional_->size() > pos_max_))
    fail("bad flag: `ds4-parity " + command_ + "` takes " + positional_help_);
  return true;
}

std::string ArgParser::usage() const {
  std::string u = "usage: ds4-parity " + command_ + " [options]" + (positional_ ? " " + positional_help_ : "") + "\n";
  for (const Opt& o : opts_) u += "  " + o.name + (o.flag ? "" : " V") + std::string(o.name.size() < 20 ? 20 - o.name.size() : 1, ' ') + o.help + "\n";
  return u;
}

}  // namespace ds4
