// ds4::Error: the one exception type of the engine. Its message is a single line that names what
// is wrong (a file, key, tensor, flag), so command-line tools print it and exit 2.
#pragma once
#include <stdexcept>
#include <string>

namespace ds4 {

// hardening (found by tests/fuzz): messages quote text from files, flags and the environment
// (a key, a gate name, a flag value), and a quoted line break made the "one line" message
// several lines. Every message is made one line here: \n, \r, \v and \f are written escaped.
inline std::string one_line_message(std::string message) {
  std::string out;
  out.reserve(message.size());
  for (char c : message) {
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\v': out += "\\x0b"; break;
      case '\f': out += "\\x0c"; break;
      default: out += c;
    }
  }
  return out;
}

struct Error : std::runtime_error {
  explicit Error(const std::string& message) : std::runtime_error(one_line_message(message)) {}
  explicit Error(const char* message) : Error(std::string(message)) {}
};

[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

}  // namespace ds4
