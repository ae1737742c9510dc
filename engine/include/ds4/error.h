// ds4::Error: the one exception type of the engine. Its message is a single line that names what
// is wrong (a file, key, tensor, flag), so command-line tools print it and exit 2.
#pragma once
#include <stdexcept>
#include <string>

namespace ds4 {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

}  // namespace ds4
