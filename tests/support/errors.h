// Test helpers: the message of the ds4::Error a call throws (and of a reader refusing a file),
// and a whole text file.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "ds4/error.h"

namespace ds4::testing {

// The message of the ds4::Error thrown by fn ("" when it throws nothing).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const ds4::Error& e) {
    return e.what();
  }
  return "";
}

// The error of opening `path` with fn(path), checked to be one line that starts with "<path>: "
// (the readers' rule); a failure is recorded when fn throws nothing.
template <class F>
std::string open_error_of(const std::string& path, F&& fn) {
  const std::string msg = error_of([&] { fn(path); });
  if (msg.empty()) {
    ADD_FAILURE() << "no error opening " << path;
    return msg;
  }
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
  return msg;
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace ds4::testing
